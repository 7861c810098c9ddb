"""Node setup in cluster.yaml: what a new node gets (the code with its git history, not the
gitignored folders), where its packages come from, and where the driver finds MLflow."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_the_code_travels_with_git_and_without_gitignored_folders(raw):
    """code_version() reads git: without .git every node's trials would record no version."""
    assert not any(".git" == Path(p).name for p in raw.get("rsync_exclude", []))
    assert ".gitignore" in raw.get("rsync_filter", [])


def test_apt_reads_its_package_lists_before_installing(raw):
    for cmd in raw["initialization_commands"]:
        if "apt-get install" in cmd:
            assert cmd.index("apt-get update") < cmd.index("apt-get install")


def test_workers_install_from_the_shared_wheelhouse_not_from_pypi(raw):
    installs = [c for c in raw["setup_commands"] if c.startswith("pip install")]
    assert installs and all("--no-index" in c and "--find-links /mnt/shared/" in c for c in installs)
    assert any("pip wheel" in c and "/mnt/shared/wheelhouse" in c for c in raw["setup_commands"])


def test_jobs_submitted_through_ray_find_the_tracking_server(raw):
    """MLFLOW_TRACKING_URI in ~/.bashrc reaches a login shell only; the head's Ray (and so every
    job driver it starts) must start with it set."""
    start = next(c for c in raw["head_start_ray_commands"] if "ray start --head" in c)
    assert start.index(". ~/orchestrator.env") < start.index("ray start --head")
    assert any("MLFLOW_TRACKING_URI" in c and "orchestrator.env" in c for c in raw["head_setup_commands"])
