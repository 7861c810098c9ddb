"""Preprocessing on a real two-node Ray cluster (this machine): batches on both nodes, and a
worker node killed mid-run loses no image and duplicates none."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fault_gate import Gate, gates_folder, wait_gone
from multinode import NodeWatch, descendants, kill_node, record, start_cluster
from PIL import Image

from core.workspace import Workspace
from orchestrator.stages.preprocess import image_table, preprocess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    import ray
    c, (worker,) = start_cluster(head_cpus=1, worker_cpus=[1])
    yield c, worker
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from core.demo_data import DemoSpec, write_demo_data
    return write_demo_data(tmp_path_factory.mktemp("demo8"), DemoSpec(train_persons=8, eval_persons=2))


def test_batches_spread_over_both_nodes_and_survive_losing_one(cluster, small_data, tmp_path):
    c, worker = cluster
    ws = Workspace(tmp_path / "shared" / "ws")   # the shared store (an NFS mount on a real cluster)
    info = {}

    def kill(held):
        info.update(killed_at_s=round(time.time() - t0, 1), held=held[0], worker_busy=watch.running("detect_batch"),
                    batches_done_before=len(list(ws.crops.glob("*/_parts/*.parquet"))))
        kill_node(c, worker)

    # the gate holds the first batch the worker node runs, half-way through, until the node is
    # killed; the head meanwhile caches at least one batch: mid-run, with work in flight on it
    with NodeWatch({"head": c.head_node, "worker": worker}) as watch, \
            Gate("detect_batch", node=worker.node_id) as gate:
        t0 = time.time()
        killer = gate.then(kill, also=lambda: list(ws.crops.glob("*/_parts/detect-*.parquet")))
        man = preprocess(small_data, ws, address=c.address, batch_size=4, progress=False)
        seconds = time.time() - t0
    killer.join()
    assert info.get("held", {}).get("node") == worker.node_id, f"the worker node was not killed mid-batch: {info}"
    assert "worker" in info["worker_busy"] and info["batches_done_before"] >= 1, info
    assert watch.ran("head", "detect_batch") and watch.ran("worker", "detect_batch")
    # every image exactly once, each with a whole crop in the shared workspace
    expected = image_table(small_data)["path"].tolist()
    assert man["path"].tolist() == expected and man["path"].is_unique
    assert (man["error"] == "").all() and (man["crop"] != "").all()
    for crop in man["crop"]:
        with Image.open(ws.crops / crop) as im:
            im.load()
    on_disk = pd.read_parquet(ws.manifest)
    assert on_disk["path"].tolist() == expected
    # a rerun finds everything cached: nothing was left half-done
    again = preprocess(small_data, ws, address=c.address, batch_size=4, progress=False)
    assert again.attrs["summary"].skipped == len(expected) and again["crop"].tolist() == man["crop"].tolist()
    record("preprocess_node_loss", images=len(expected), batches=-(-len(expected) // 4), seconds=round(seconds, 1),
           rerun_cached=again.attrs["summary"].skipped, summary=man.attrs["summary"].line(),
           held_batch_first_image=info.pop("held")["first"], **info)


AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _freeze(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGSTOP)
        return True
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def test_preprocess_killed_hard_then_rerun_crops_every_image_once(small_data, tmp_path):
    """SIGKILL to a `preprocess` driver (its own local Ray, as `make demo` starts it) half-way
    through a batch, with batches cached; the rerun crops every image exactly once and first
    kills the Ray agents the dead driver left behind."""
    ws = tmp_path / "ws"
    env = dict(os.environ, PYTHONPATH=str(ROOT), ORCHESTRATOR_FAILPOINTS=str(gates_folder()))
    cmd = [sys.executable, "-m", "orchestrator", "preprocess", "--data", str(small_data), "--workspace", str(ws),
           "--batch-size", "4", "--no-progress"]
    third = image_table(small_data)["path"].iloc[8]   # the 3rd batch starts once one is cached
    t0, agents = time.time(), []
    with Gate("detect_batch", first=third) as gate:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        struck = gate.kill_driver(proc, also=lambda: list(ws.glob("crops/*/_parts/detect-*.parquet")),
                                  before=lambda: (descendants(proc.pid), len(list(ws.glob("crops/*/_parts/*.parquet")))))
        [held], (procs, parts_before), killed_at = struck.held, struck.seen, round(struck.at - t0, 1)
        # its local Ray goes with it, but its agents outlive their raylet by a minute or more (they
        # report its death to the dead GCS, 60 s timeout): frozen once the raylet is gone, their
        # own exit cannot race the rerun, which must kill them
        wait_gone([p for p, title in procs.items() if title.split()[0].endswith("/raylet")])
        agents = [p for p, title in procs.items() if title.split()[0] in AGENTS and _freeze(p)]
        wait_gone([p for p, title in procs.items() if title.split()[0] not in AGENTS])
    try:
        assert not Path(f"/proc/{held['pid']}").exists(), "the held worker outlived its driver"
        assert len(agents) == 2 and not Workspace(ws).manifest.exists()   # killed before any manifest
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        wait_gone(agents, timeout=30)
        survivors = [p for p in agents if Path(f"/proc/{p}").exists()]
    finally:
        for p in agents:   # never leave a frozen process behind
            _kill(p)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    reaped = re.search(r"left by a Ray session whose driver died: pids ([\d ]+)", rerun.stderr)
    assert set(agents) <= set(map(int, reaped.group(1).split()) if reaped else ()), (agents, rerun.stderr[-2000:])
    assert not survivors, survivors
    # every image exactly once, whole crops, a whole manifest, no temp file left
    expected = image_table(small_data)["path"].tolist()
    man = pd.read_parquet(Workspace(ws).manifest)
    assert man["path"].tolist() == expected and man["path"].is_unique and (man["crop"] != "").all()
    for crop in man["crop"]:
        with Image.open(ws / "crops" / crop) as im:
            im.load()
    assert not list(ws.rglob("*.tmp"))
    record("preprocess_driver_killed", images=len(expected), killed_at_s=killed_at, batches_cached=parts_before,
           held_batch_first_image=held["first"], agents_reaped=len(agents),
           rerun=rerun.stdout.strip().splitlines()[-1], seconds=round(time.time() - t0, 1))
