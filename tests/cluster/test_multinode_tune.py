"""Tune studies on a real three-node Ray cluster (this machine) logging to a real `mlflow server`
over HTTP, with the faults of a cluster: a node lost mid-trial, the driver interrupted (SIGINT)
and resumed from the CLI, the MLflow server stopped mid-study and restarted.

The head has no CPU (as in cluster.yaml), so every trial runs on a worker node; "shared storage"
is a tmp folder every node sees (an NFS mount or s3:// on a real cluster): the workspace, Tune's
storage (--storage, apart from the workspace) and the server's artifacts.
"""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.study import TuneOptions, tune_head
from core.workspace import Workspace
from results.tracking import TrackingError, download_artifact, find_runs
from trainables.models import load_model_file

from multinode import NODE, MlflowServer, NodeWatch, kill_node, record, start_cluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRIAL = "ImplicitFunc"          # the process title of a function trainable's trial actor


@pytest.fixture(scope="module")
def server(shared):
    s = MlflowServer(shared / "mlflow").launch()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cluster(server):
    import ray
    c, workers = start_cluster(head_cpus=0, worker_cpus=[1, 1])   # while the server starts
    server.wait()
    nodes = {"w1": workers[0], "w2": workers[1]}
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def tws(crops_ws, shared):
    """(data, Workspace on the shared store with Tune storage elsewhere on it)."""
    data, src = crops_ws
    ws = Workspace(shared / "ws", storage=str(shared / "tune-storage"))
    ws.root.mkdir(parents=True, exist_ok=True)
    (ws.root / "crops").symlink_to(src.crops)
    return data, ws.make()


def opts(c, server, **kw) -> TuneOptions:
    return TuneOptions(smoke_test=True, verbose=0, gpus_per_trial=0, address=c.address,
                       tracking_uri=server.uri, **kw)


def steps(uri, run_id, key="val_f1"):
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


def _when(cond, action, timeout=240):
    """Run ``action`` in a thread as soon as ``cond()`` holds."""
    def run():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                action()
                return
            time.sleep(0.05)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _ckpts(ws, study, phase, n):
    return list(Path(ws.tune_storage, f"{study}-{phase}").glob(f"*/checkpoint_{n:06d}"))


def _driver_knows(ws, study, phase, name):
    """The driver's experiment state (snapshotted after every checkpoint) mentions ``name``."""
    for p in Path(ws.tune_storage, f"{study}-{phase}").glob("experiment_state-*.json"):
        try:
            if name in p.read_text():
                return True
        except OSError:   # being replaced
            pass
    return False


def _trials_with_checkpoints(ws, study, phase):
    # any checkpoint: Tune keeps only the newest (num_to_keep), so a given number comes and goes
    return {p.parent for p in Path(ws.tune_storage, f"{study}-{phase}").glob("*/checkpoint_*")}


def test_study_runs_trials_on_both_nodes_and_logs_over_http(cluster, server, tws):
    c, nodes = cluster
    data, ws = tws
    t0 = time.time()
    with NodeWatch(nodes) as watch:
        table = tune_head(data, ws, "gender", opts(c, server, study="multi", phase="search", max_concurrent=2))
    assert watch.ran("w1", TRIAL) and watch.ran("w2", TRIAL), watch.seen
    assert len(table) == 2
    # Tune's results on the shared storage (--storage), not in the workspace
    assert len(_ckpts(ws, "multi", "search", 0)) == 2
    assert not (ws.root / "tune" / "multi-search").exists()
    # MLflow over HTTP: every trial FINISHED, model files in the server's artifact store
    runs = find_runs(server.uri, study="multi")
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert len(list(server.artifacts.rglob("model.pt"))) == 2
    for _, r in runs.iterrows():      # the (fold 0) models load back over HTTP
        model, cfg = load_model_file(download_artifact(server.uri, r["run_id"], "model/model.pt"))
        assert cfg.head == "gender" and cfg.fold == int(r["tags.fold"]) and r["artifact_uri"].startswith("mlflow-artifacts:")
    record("tune_two_nodes", seconds=round(time.time() - t0, 1), trials=len(runs),
           nodes={k: sorted(v) for k, v in watch.seen.items()})


def test_node_lost_mid_trial_resumes_from_its_checkpoint_elsewhere(cluster, server, tws):
    c, nodes = cluster
    data, ws = tws
    info = {}

    def kill():
        victim = (watch.running(TRIAL) or ["?"])[0]
        info.update(killed=victim, at_s=round(time.time() - t0, 1))
        kill_node(c, nodes.pop(victim))

    with NodeWatch(dict(nodes)) as watch:
        t0 = time.time()
        # kill once the driver has registered the first checkpoint (its experiment state names it):
        # a checkpoint folder alone may still be unknown to the driver, and a retry then rightly
        # starts from scratch. Three epochs leave time to kill before the trial ends
        killer = _when(lambda: _driver_knows(ws, "nodeloss", "search", "checkpoint_000000") and watch.running(TRIAL),
                       kill)
        tune_head(data, ws, "mask", opts(c, server, study="nodeloss", phase="search", num_samples=1, epochs=3))
        killer.join()
    nodes["w3"] = c.add_node(num_cpus=1, **NODE)   # the autoscaler's replacement, for the next tests
    assert info.get("killed") in ("w1", "w2"), info
    survivor = ({"w1", "w2"} - {info["killed"]}).pop()
    assert watch.ran(survivor, TRIAL)                 # the trial moved to the surviving node
    runs = find_runs(server.uri, study="nodeloss")
    assert len(runs) == 1 and runs["status"][0] == "FINISHED"        # the retry continued its own run
    seen = steps(server.uri, runs["run_id"][0])
    assert sorted(set(seen)) == [1, 2, 3] and seen.count(1) == 1  # epoch 1 was not trained again
    record("tune_node_loss", seconds=round(time.time() - t0, 1), steps=seen, **info)


def test_sigint_to_the_driver_then_resume_from_the_cli(cluster, server, tws):
    c, _ = cluster
    data, ws = tws
    cmd = [sys.executable, "-m", "orchestrator", "tune", "--head", "mask", "--smoke-test", "--phase", "search",
           "--num-samples", "3", "--epochs", "2", "--max-concurrent", "1", "--gpus-per-trial", "0",
           "--study", "sigint", "--address", c.address, "--tracking-uri", server.uri, "--data", str(data),
           "--workspace", str(ws.root), "--storage", ws.storage, "--log-level", "WARNING"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = {}
    # one trial at a time: SIGINT once a second trial has a checkpoint. The first trial has then
    # returned (its MLflow run closed FINISHED; its own last checkpoint comes a moment before
    # that, too early a trigger) and the third has not started
    killer = _when(lambda: len(_trials_with_checkpoints(ws, "sigint", "search")) >= 2,
                   lambda: (sent.update(at_s=round(time.time() - t0, 1)), proc.send_signal(signal.SIGINT)))
    out, err = proc.communicate(timeout=300)
    killer.join()
    assert proc.returncode == 130 and "--resume" in err, (proc.returncode, sent, err[-3000:])
    before = find_runs(server.uri, study="sigint")
    done = before[before["status"] == "FINISHED"]
    assert 1 <= len(done) and (len(before) < 3 or len(done) < 3)
    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "best trials of study 'sigint'" in resumed.stdout
    after = find_runs(server.uri, study="sigint")
    assert len(after) == 3 and set(after["status"]) == {"FINISHED"} and after["tags.trial_id"].is_unique
    for _, r in done.iterrows():       # finished trials were not rerun
        assert steps(server.uri, r["run_id"]) == [1, 2]
    record("tune_sigint", interrupted_at_s=sent.get("at_s"), finished_before=len(done), started_before=len(before),
           seconds=round(time.time() - t0, 1))


def test_mlflow_server_stopped_mid_study_then_restarted_and_resumed(cluster, server, tws):
    c, _ = cluster
    data, ws = tws
    o = opts(c, server, study="outage", phase="search", num_samples=2, epochs=2, max_concurrent=2, max_failures=0)
    info = {}
    t0 = time.time()
    stopper = _when(lambda: _ckpts(ws, "outage", "search", 0),
                    lambda: (info.update(stopped_at_s=round(time.time() - t0, 1)), server.stop()))
    with pytest.raises(TrackingError, match=r"stopped answering.*checkpoints are kept.*--resume"):
        tune_head(data, ws, "mask", o)
    stopper.join()
    kept = _ckpts(ws, "outage", "search", 0)
    assert kept, "the trials' checkpoints are gone"
    server.start()
    info["restarted_at_s"] = round(time.time() - t0, 1)
    tune_head(data, ws, "mask", TuneOptions(**{**o.__dict__, "resume": True}))
    runs = find_runs(server.uri, study="outage")
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"} and runs["tags.trial_id"].is_unique
    for _, r in runs.iterrows():      # logging completed: every epoch, in the trial's own run
        assert sorted(set(steps(server.uri, r["run_id"]))) == [1, 2]
    record("tune_mlflow_outage", checkpoints_kept=len(kept), seconds=round(time.time() - t0, 1), **info)
