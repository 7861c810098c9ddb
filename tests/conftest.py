import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.bad_input import write_records

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # tests must not write ~/.ray/auth_token
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Ray nodes and drivers use 127.0.0.1, not the machine's network address (tests/cluster/ starts
# multi-node clusters on this machine; nothing may listen beyond loopback)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# The generated bad-input tests: a fixed seed and a bounded count in the suite (seconds); the long
# sweep (`pytest --hypothesis-profile long`, benchmarks/bad_input_table.py --long) tries 50x more.
_GENERATED = dict(derandomize=True, deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("default", max_examples=20, **_GENERATED)   # x each test's share (tests/test_bad_input.py)
settings.register_profile("long", max_examples=1000, **_GENERATED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]
UTKMASK = ROOT.parent / "shared" / "utkmask"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The built-in demo data set, made once per session (read-only for tests)."""
    from core.demo_data import DemoSpec, write_demo_data
    return write_demo_data(tmp_path_factory.mktemp("demo"), DemoSpec(train_persons=30, eval_persons=8))


@pytest.fixture
def demo_copy(demo_dir, tmp_path) -> Path:
    """A private copy of the demo data that a test may break."""
    return Path(shutil.copytree(demo_dir, tmp_path / "data"))


def utkmask_available() -> bool:
    return (UTKMASK / "make_utkmask.py").is_file() and (UTKMASK / "faces").is_dir()


@pytest.fixture(scope="session")
def utkmask_dir(tmp_path_factory) -> Path:
    """60 real persons laid out by ../shared/utkmask's own script (train and eval)."""
    if not utkmask_available():
        pytest.skip(f"real-face set not found at {UTKMASK} (needs ../shared/utkmask)")
    out = tmp_path_factory.mktemp("utkmask")
    persons = (UTKMASK / "persons.txt").read_text().splitlines()
    (out / "train.txt").write_text("\n".join(persons[:40]) + "\n")
    (out / "eval.txt").write_text("\n".join(persons[40:60]) + "\n")
    for split, lst in (("train", "train.txt"), ("eval", "eval.txt")):
        subprocess.run([sys.executable, str(UTKMASK / "make_utkmask.py"), split, str(UTKMASK / "faces"),
                        str(UTKMASK / "landmarks.csv"), str(out / lst), str(out / "data")],
                       check=True, capture_output=True)
    return out / "data"


@pytest.fixture(scope="session")
def crops_ws(demo_dir, tmp_path_factory):
    """(data_dir, Workspace) whose manifest + crops follow core/manifest.py.

    The real preprocessing stage (MTCNN on Ray; the drawn demo faces mostly fall back to
    the prior box), run once per session on a small local Ray that is shut down after.
    """

    from core.faces import CropSettings
    from orchestrator.preprocess import preprocess
    from orchestrator.ray_session import ray_session
    from core.workspace import Workspace
    ws = Workspace(tmp_path_factory.mktemp("ws")).make()
    with ray_session(num_cpus=2):
        preprocess(demo_dir, ws, CropSettings(size=96), progress=False)
    return demo_dir, ws


@pytest.fixture(scope="session", autouse=True)
def faults_record(tmp_path_factory) -> Path:
    """Where the fault tests leave their records ($FAULTS_RECORD, else a temporary folder of this test run):
    benchmarks/faults_table.py's smoke test then tables the records this suite made."""
    os.environ.setdefault("FAULTS_RECORD", str(tmp_path_factory.mktemp("faults")))
    return Path(os.environ["FAULTS_RECORD"])


@pytest.fixture(scope="session", autouse=True)
def bad_input_record(tmp_path_factory) -> Path:
    """Where the bad-input tests' counts go ($BAD_INPUT_RECORD, else a folder of this test run),
    written when the session ends (tests/bad_input.py)."""
    os.environ.setdefault("BAD_INPUT_RECORD", str(tmp_path_factory.mktemp("bad-input")))
    folder = Path(os.environ["BAD_INPUT_RECORD"])
    yield folder
    write_records(folder)


def benchmark_smoke(script: str, *args: str) -> str:
    """``benchmarks/SCRIPT --smoke ARGS`` as a user starts it; its stdout (fails with its output's tail)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="session")
def budget_run(tmp_path_factory) -> dict:
    """`benchmarks/quality.py --smoke` once per suite: `run --budget 200s` on demo data, scored.
    Its line of JSON (wall_s, budget_s, f1, ..., workspace, data) serves the benchmark smoke tests
    and tests/test_run.py's budget check (a `run --budget` costs the suite most of a minute)."""
    import json
    out = benchmark_smoke("quality.py", "--work", str(tmp_path_factory.mktemp("budget-run")))
    return json.loads(out.strip().splitlines()[-1])


def workspace_sharing_crops(src, root: Path, **kw):
    """A private workspace (own MLflow store and Tune storage) at ``root`` that reads the session's
    crops and manifest from ``src`` (a Workspace) instead of cropping again; ``kw`` go to Workspace."""
    from core.workspace import Workspace
    ws = Workspace(root, **kw)
    ws.root.mkdir(parents=True, exist_ok=True)
    (ws.root / "crops").symlink_to(src.crops)
    return ws.make()
