"""cluster.yaml passes Ray's own cluster-launcher schema and checks (no cloud call)."""
import copy
from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(YAML.read_text())


def test_cluster_yaml_passes_ray_validation(raw):
    cfg = prepare_config(copy.deepcopy(raw))   # fills AWS defaults like `ray up` does
    validate_config(cfg)
    head, worker = cfg["available_node_types"]["head_cpu"], cfg["available_node_types"]["worker_gpu"]
    assert cfg["head_node_type"] == "head_cpu" and head["resources"] == {"CPU": 0}
    assert worker["resources"]["GPU"] >= 1 and worker["min_workers"] == 0 < worker["max_workers"]


def test_ray_validation_rejects_what_the_launcher_would(raw):
    # the check is not a rubber stamp: a fractional resource (a common slip) fails it
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["worker_gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(ValidationError):
        validate_config(prepare_config(bad))


def test_every_node_installs_the_package_and_mounts_shared_storage(raw):
    assert any("pip install" in c and "/home/ubuntu/app" in c for c in raw["setup_commands"])
    assert raw["file_mounts"]["/home/ubuntu/app"] == "./"
    assert any("mount -t nfs4" in c and "/mnt/shared" in c for c in raw["initialization_commands"])


def test_mlflow_server_listens_on_the_private_network_only(raw):
    start = " ".join(raw["head_start_ray_commands"])
    assert "mlflow server" in start and "--host \"$(hostname -I" in start
    assert "--host 0.0.0.0" not in start and "--host=0.0.0.0" not in start
    assert "--artifacts-destination /mnt/shared/" in start
