"""An autoscaling cluster as cluster.yaml makes it, on Ray's fake multi-node provider: a head of
CPU 0 and GPU workers (logical GPUs) from 0 workers. `tune --address ... --gpus-per-trial 0.5`
must ask for GPUs before any GPU node exists, so that the autoscaler adds GPU nodes, every trial
gets a GPU id and trials run side by side (sized from what the cluster can become, not from the
empty head the driver sees at start).

The cluster runs in its own processes (`RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=...`) under a private temp dir and port; every process it started is
killed at the end, by pid."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, workspace_sharing_crops
from multinode import _parents, descendants

pytestmark = pytest.mark.slow
MAX_WORKERS = 2   # cluster.yaml allows 4 GPU workers; 2 are enough to show scaling on a small machine
EMPTY_KEYS = {"file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
              "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
              "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
              "worker_start_ray_commands": []}   # the monitor reads them all (KeyError without)
FAKE_HEAD = "ray.head.default"   # the fake provider's name for the head's node type


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_config(gcs: str) -> dict:
    """cluster.yaml's node types (its resources, logical GPUs here) on the fake provider."""
    real = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = dict(real["available_node_types"])
    head = types.pop(real["head_node_type"])
    nodes = {FAKE_HEAD: {"resources": head["resources"], "node_config": {}, "max_workers": 0}}
    nodes |= {name: {"resources": t["resources"], "node_config": {}, "min_workers": t.get("min_workers", 0),
                     "max_workers": min(t["max_workers"], MAX_WORKERS)} for name, t in types.items()}
    return {"cluster_name": "fake-autoscaling", "max_workers": MAX_WORKERS, "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5, "auth": {"ssh_user": "ubuntu"}, "head_node_type": FAKE_HEAD,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs},
            "available_node_types": nodes} | EMPTY_KEYS


def cluster_pids(temp_dir: Path) -> set[int]:
    """Every process of the fake cluster: those started under its temp dir (GCS, head raylet,
    the monitor, which launches the worker nodes) and everything below them."""
    parents, pids = _parents(), set()
    for pid in parents:
        try:
            if str(temp_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids |= {pid} | set(descendants(pid, parents))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    from ray._private.services import get_node_ip_address
    temp_dir = Path(f"/tmp/fakeas-{os.getpid()}")   # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    gcs = f"{get_node_ip_address()}:{port}"
    config = tmp_path_factory.mktemp("autoscaler") / "cluster.yaml"
    config.write_text(yaml.safe_dump(fake_config(gcs)))
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=0",
                    "--num-gpus=0", f"--autoscaling-config={config}", f"--temp-dir={temp_dir}",
                    "--include-dashboard=false"], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield gcs
    finally:
        for pid in cluster_pids(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def gpu_nodes(gcs: str) -> int:
    """Live nodes with a GPU, asked in a separate process (this one holds no Ray session)."""
    code = ("import ray; ray.init(address=%r, log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('GPU')))" % gcs)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    return int(out.stdout.strip().splitlines()[-1])


def test_tune_on_an_autoscaling_cluster_asks_for_gpus_and_runs_trials_side_by_side(fake_cluster, crops_ws, tmp_path):
    from results.tracking import find_runs, most_at_once
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path / "ws").root
    assert gpu_nodes(fake_cluster) == 0   # what the driver sees at start: the CPU-0 head only
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "tune", "--head", "all", "--smoke-test",
                           "--phase", "search", "--num-samples", "4", "--gpus-per-trial", "0.5",
                           "--address", fake_cluster, "--data", str(data), "--workspace", str(ws)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no GPU in the Ray cluster" not in proc.stderr
    assert gpu_nodes(fake_cluster) >= 1   # the autoscaler added GPU workers for the trials
    runs = find_runs(f"sqlite:///{ws.resolve()}/mlflow.db", head="all", phase="search")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert all(ids != "" for ids in runs["tags.ray_gpu_ids"]), runs["tags.ray_gpu_ids"].tolist()
    assert set(runs["tags.cuda_visible_devices"]) != {""}   # no trial ran with the GPUs hidden
    assert most_at_once(f"sqlite:///{ws.resolve()}/mlflow.db", runs["run_id"]) >= 2
