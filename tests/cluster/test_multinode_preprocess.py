"""Preprocessing on a real two-node Ray cluster (this machine): batches on both nodes, and a
worker node killed mid-run loses no image and duplicates none."""
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from orchestrator.preprocess import image_table, preprocess
from core.workspace import Workspace

from multinode import NodeWatch, kill_node, record, start_cluster

pytestmark = pytest.mark.slow


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


def _kill_worker_when_busy(c, worker, watch: NodeWatch, parts: Path, out: dict):
    """Kill the worker node (raylet and its workers) while it runs a batch, once at least one
    batch is in the cache: mid-run, with work in flight on it."""
    import threading

    def run():
        t0, deadline = time.time(), time.time() + 240
        while time.time() < deadline:
            busy = watch.running("detect_batch")
            if "worker" in busy and list(parts.glob("*/_parts/detect-*.parquet")):
                out.update(killed_at_s=round(time.time() - t0, 1), worker_busy=busy,
                           batches_done_before=len(list(parts.glob("*/_parts/*.parquet"))))
                kill_node(c, worker)
                return
            time.sleep(0.05)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_batches_spread_over_both_nodes_and_survive_losing_one(cluster, small_data, tmp_path):
    c, worker = cluster
    ws = Workspace(tmp_path / "shared" / "ws")   # the shared store (an NFS mount on a real cluster)
    info = {}
    with NodeWatch({"head": c.head_node, "worker": worker}) as watch:
        killer = _kill_worker_when_busy(c, worker, watch, ws.crops, info)
        t0 = time.time()
        man = preprocess(small_data, ws, address=c.address, batch_size=4, progress=False)
        seconds = time.time() - t0
        killer.join()
    assert "worker" in info.get("worker_busy", []), f"the worker node was not killed mid-batch: {info}"
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
           rerun_cached=again.attrs["summary"].skipped, summary=man.attrs["summary"].line(), **info)
