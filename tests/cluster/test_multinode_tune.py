"""Tune studies on a real three-node Ray cluster (this machine) logging to a real `mlflow server`
over HTTP, with the faults of a cluster: a node lost mid-trial, the driver interrupted (SIGINT)
and resumed from the CLI, the MLflow server stopped mid-study and restarted.

The head has no CPU (as in cluster.yaml), so every trial runs on a worker node; "shared storage"
is a tmp folder every node sees (an NFS mount or s3:// on a real cluster): the workspace, Tune's
storage (--storage, apart from the workspace) and the server's artifacts.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import workspace_sharing_crops
from fault_gate import Gate, wait_gone
from mlflow.tracking import MlflowClient
from multinode import NODE, MlflowServer, NodeWatch, kill_node, record, start_cluster

from orchestrator.stages.tune import TuneOptions, tune_head
from results.tracking import TrackingError, download_model, find_runs
from trainables.models import load_model_file

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
    return data, workspace_sharing_crops(src, shared / "ws", storage=str(shared / "tune-storage"))


def opts(c, server, **kw) -> TuneOptions:
    return TuneOptions(smoke_test=True, verbose=0, gpus_per_trial=0, address=c.address,
                       tracking_uri=server.uri, **kw)


def steps(uri, run_id, key="val_f1"):
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


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
        model, cfg = load_model_file(download_model(server.uri, r["run_id"]))
        assert cfg.head == "gender" and cfg.fold == int(r["tags.fold"]) and r["artifact_uri"].startswith("mlflow-artifacts:")
    record("tune_two_nodes", seconds=round(time.time() - t0, 1), trials=len(runs),
           nodes={k: sorted(v) for k, v in watch.seen.items()})


def test_node_lost_mid_trial_resumes_from_its_checkpoint_elsewhere(cluster, server, tws):
    c, nodes = cluster
    data, ws = tws
    info = {}
    names = {n.node_id: name for name, n in nodes.items()}

    def kill(held):
        victim = names[held[0]["node"]]
        info.update(killed=victim, at_s=round(time.time() - t0, 1), running=watch.running(TRIAL))
        kill_node(c, nodes.pop(victim))

    # the gate holds the trial at the start of epoch 2 on its node; the node is killed once the
    # driver has registered the first checkpoint (its experiment state names it): a checkpoint
    # folder alone may still be unknown to the driver, and a retry then rightly starts afresh
    with NodeWatch(dict(nodes)) as watch, Gate("epoch", epoch=1, phase="search") as gate:
        t0 = time.time()
        killer = gate.then(kill, also=lambda: _driver_knows(ws, "nodeloss", "search", "checkpoint_000000"))
        tune_head(data, ws, "mask", opts(c, server, study="nodeloss", phase="search", num_samples=1, trial=dict(epochs=3)))
    killer.join()
    nodes["w3"] = c.add_node(num_cpus=1, **NODE)   # the autoscaler's replacement, for the next tests
    assert info.get("killed") in ("w1", "w2") and info["killed"] in info["running"], info
    # the retry can only have run on the surviving node: the killed one is gone and the head has
    # no CPU (neither a process-title sampler nor the gate's arrivals saw every retry on a machine
    # whose memory ran out: Ray's OOM killer may take a retry before it reaches the gate)
    survivor = ({"w1", "w2"} - {info["killed"]}).pop()
    info["retries_seen_on_survivor"] = len([a for a in gate.arrivals() if a["node"] == nodes[survivor].node_id])
    runs = find_runs(server.uri, study="nodeloss")
    assert len(runs) == 1 and runs["status"][0] == "FINISHED"        # the retry continued its own run
    seen = steps(server.uri, runs["run_id"][0])
    assert sorted(set(seen)) == [1, 2, 3] and seen.count(1) == 1  # epoch 1 was not trained again
    record("tune_node_loss", seconds=round(time.time() - t0, 1), steps=seen, killed=info["killed"], at_s=info["at_s"],
           retries_seen_on_survivor=info["retries_seen_on_survivor"])


def test_sigint_to_the_driver_then_resume_from_the_cli(cluster, server, tws):
    c, _ = cluster
    data, ws = tws
    cmd = [sys.executable, "-m", "orchestrator", "tune", "--head", "mask", "--smoke-test", "--phase", "search",
           "--num-samples", "3", "--epochs", "2", "--max-concurrent", "1", "--gpus-per-trial", "0",
           "--study", "sigint", "--address", c.address, "--tracking-uri", server.uri, "--data", str(data),
           "--workspace", str(ws.root), "--storage", ws.storage, "--log-level", "WARNING"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sent = {}

    def interrupt(held):
        sent.update(at_s=round(time.time() - t0, 1), held=held[0])
        proc.send_signal(signal.SIGINT)
        gate.release()   # the interrupted trial goes on with its epoch while Tune stops it, as after a real Ctrl-C

    # one trial at a time: the gate holds the 2nd trial after its 1st checkpoint; the 1st trial
    # has then returned (its MLflow run closed FINISHED) and the 3rd has not started
    with Gate("epoch", epoch=1, trial=2) as gate:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killer = gate.then(interrupt)
        out, err = proc.communicate(timeout=600)
    killer.join()
    assert proc.returncode == 130 and "--resume" in err and sent.get("held"), (proc.returncode, sent, err[-3000:])
    before = find_runs(server.uri, study="sigint")
    done = before[before["status"] == "FINISHED"]
    assert 1 <= len(done) and (len(before) < 3 or len(done) < 3)
    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
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
    o = opts(c, server, study="outage", phase="search", num_samples=2, trial=dict(epochs=2), max_concurrent=2, max_failures=0)
    info = {}
    t0 = time.time()

    def stop(held):
        info.update(stopped_at_s=round(time.time() - t0, 1), held=len(held))
        server.stop()

    # both trials are held after their first checkpoint until the server is down
    with Gate("epoch", holders=2, epoch=1) as gate:
        stopper = gate.then(lambda held: (stop(held), gate.release()))
        with pytest.raises(TrackingError, match=r"stopped answering.*checkpoints are kept.*--resume"):
            tune_head(data, ws, "mask", o)
    stopper.join()
    assert info.get("held") == 2, info
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


def _driver_knows_trial_checkpoint(ws, study, phase, trial_id, n=0):
    """The driver's saved experiment state has checkpoint ``n`` as trial ``trial_id``'s last result."""
    for p in Path(ws.tune_storage, f"{study}-{phase}").glob("experiment_state-*.json"):
        try:
            for trial, meta in json.loads(p.read_text())["trial_data"]:
                if json.loads(trial)["trial_id"] == trial_id:
                    last = json.loads(meta).get("last_result") or {}
                    return last.get("checkpoint_dir_name") == f"checkpoint_{n:06d}"
        except (OSError, ValueError, KeyError):   # being replaced
            pass
    return False


def test_trial_killed_while_writing_its_checkpoint_restarts_from_the_last_whole_one(cluster, server, tws):
    """SIGKILL to the trial's worker process with one of the two fold files of its epoch-2
    checkpoint written: the retry starts from the epoch-1 checkpoint, trains epoch 2 again and
    ends in the same MLflow run."""
    c, _ = cluster
    data, ws = tws
    info = {}

    def kill(held):
        info.update(at_s=round(time.time() - t0, 1), held=held[0])
        os.kill(held[0]["pid"], signal.SIGKILL)

    # --search-folds 2: a checkpoint is two state files; the gate holds the trial between them
    with Gate("checkpoint", epoch=2, written=1) as gate:
        t0 = time.time()
        killer = gate.then(kill, also=lambda: _driver_knows(ws, "ckptkill", "search", "checkpoint_000000"))
        tune_head(data, ws, "mask", opts(c, server, study="ckptkill", phase="search", num_samples=1,
                                         trial=dict(epochs=3, search_folds=2)))
    killer.join()
    assert info.get("held", {}).get("written") == 1, f"the trial was not killed mid-checkpoint: {info}"
    runs = find_runs(server.uri, study="ckptkill")
    assert len(runs) == 1 and runs["status"][0] == "FINISHED"
    seen = steps(server.uri, runs["run_id"][0])
    # epoch 2 was logged, then killed in its checkpoint: trained again from the epoch-1 checkpoint
    assert seen == [1, 2, 2, 3], seen
    [last] = _trials_checkpoints(ws, "ckptkill", "search")
    assert sorted(p.name for p in last.iterdir()) == ["state_0.pt", "state_1.pt"]
    record("tune_checkpoint_killed", at_s=info["at_s"], steps=seen, seconds=round(time.time() - t0, 1))


def _trials_checkpoints(ws, study, phase):
    return sorted(Path(ws.tune_storage, f"{study}-{phase}").glob("*/checkpoint_*"))


def test_driver_killed_mid_study_then_resume_closes_its_runs(cluster, server, tws):
    """SIGKILL to the `tune` driver (as the OOM killer does: no handler runs) while its 2nd trial
    is held after its first checkpoint; `--resume` continues that trial in its own MLflow run
    from the checkpoint, reruns no finished trial and leaves no run RUNNING."""
    c, _ = cluster
    data, ws = tws
    cmd = [sys.executable, "-m", "orchestrator", "tune", "--head", "mask", "--smoke-test", "--phase", "search",
           "--num-samples", "3", "--epochs", "2", "--max-concurrent", "1", "--gpus-per-trial", "0",
           "--study", "drvkill", "--address", c.address, "--tracking-uri", server.uri, "--data", str(data),
           "--workspace", str(ws.root), "--storage", ws.storage, "--log-level", "WARNING"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with Gate("epoch", epoch=1, trial=2) as gate:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        struck = gate.kill_driver(proc, also=lambda: any(
            _driver_knows_trial_checkpoint(ws, "drvkill", "search", h["id"]) for h in gate.reached()))
        [held], killed_at = struck.held, round(struck.at - t0, 1)
        wait_gone([held["pid"]])   # Ray ends a dead driver's trial actors
    assert not Path(f"/proc/{held['pid']}").exists(), "the held trial outlived its driver"
    before = find_runs(server.uri, study="drvkill")
    # the held trial's run stays RUNNING (the 1st trial's too when Tune stopped it at its last
    # report, before it closed its run: the driver closes such runs after the fit, never reached)
    assert len(before) == 2 and "RUNNING" in set(before.loc[before["tags.trial_id"] == held["id"], "status"]), before
    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = find_runs(server.uri, study="drvkill")
    assert len(after) == 3 and set(after["status"]) == {"FINISHED"} and after["tags.trial_id"].is_unique
    parents = find_runs(server.uri, study="drvkill", role="study")
    assert set(parents["status"]) == {"FINISHED"}
    for _, r in before.iterrows():   # the finished trial was not rerun; the held one kept epoch 1
        assert steps(server.uri, r["run_id"]) == [1, 2], (r["status"], steps(server.uri, r["run_id"]))
    record("tune_driver_killed", killed_at_s=killed_at, runs_before=dict(before["status"].value_counts()),
           seconds=round(time.time() - t0, 1))


def test_driver_killed_mid_run_budget_then_rerun_keeps_to_what_is_left(cluster, tmp_path):
    """`run --budget` SIGKILLed with a full-data retrain trial held at its start (cv done); the
    rerun counts the killed run's seconds against the budget, reuses every tune trial, closes
    the runs the killed driver left RUNNING, and gives its trials only what is left. The rerun's
    budget is the seconds used plus the first run's whole budget, so what is left (that budget)
    fits whatever the load; a budget the stopped run spent is refused in tests/test_run_ledger.py."""
    from core.demo_data import DemoSpec, write_demo_data
    c, _ = cluster
    data = write_demo_data(tmp_path / "data", DemoSpec(train_persons=8, eval_persons=2))
    # the first run must reach its retrain whatever the load: 600 s is more than preprocessing,
    # the speed probe and trial start-up took at load 45; the epochs are capped (2), not the time
    ws, budget = tmp_path / "ws", 600
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "orchestrator", "run", "--data", str(data), "--workspace", str(ws), "--budget",
           f"{budget}s", "--max-epochs", "2", "--model", "test_efficientnet", "--img-size", "32", "--folds", "2",
           "--address", c.address]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with Gate("epoch", phase="full", epoch=0) as gate:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        struck = gate.kill_driver(proc)
        [held], first, killed_at = struck.held, struck.output, struck.at - t0
        wait_gone([held["pid"]])
    used = json.loads((ws / "results" / "run-run.json").read_text())["used_s"]
    before = find_runs(uri, study="run-all")
    assert set(before.loc[before["tags.phase"] == "full", "status"]) >= {"RUNNING"}, first[-3000:]
    tuned = set(before.loc[before["tags.phase"] != "full", "run_id"])
    t1 = time.time()
    again = math.ceil(used) + budget
    rerun = subprocess.run([*cmd[:cmd.index("--budget") + 1], f"{again}s", *cmd[cmd.index("--budget") + 2:]],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    rerun_s = time.time() - t1
    out = rerun.stdout + rerun.stderr
    assert f"{used:.0f} s of the {again} s budget used by the stopped run: {again - used:.0f} s left" in out, out[-3000:]
    assert rerun.returncode == 0, out[-3000:]
    after = find_runs(uri, study="run-all")
    assert "RUNNING" not in set(after["status"]) and "RUNNING" not in set(find_runs(uri, study="run-all", role="study")["status"])
    # the killed driver's full-data trial continues in its own MLflow run (run restores its retrain
    # experiment); a run it left RUNNING that no trial continues is closed KILLED
    killed = after[after["run_id"].isin(before.loc[before["status"] == "RUNNING", "run_id"])]
    assert set(killed["status"]) <= {"KILLED", "FINISHED"}, killed[["status", "tags.phase"]]
    assert set(killed.loc[killed["tags.phase"] == "full", "status"]) == {"FINISHED"}, killed[["status", "tags.phase"]]
    assert set(after.loc[after["tags.phase"] != "full", "run_id"]) == tuned   # no tune trial trained again
    deadlines = [json.loads(trial)["config"]["run"]["deadline"]   # the rerun's retrain trials, as Tune saved them
                 for p in (ws / "tune").glob("run-all-full*/experiment_state-*.json") if p.stat().st_mtime >= t1
                 for trial, _ in json.loads(p.read_text())["trial_data"]]
    # the rerun gave its trials only what was left: deadlines by its start + (budget - used); its
    # wall time is recorded, not asserted: on a loaded machine the fixed costs (actor start-up,
    # the ensemble) run past the sizing's estimates of them, killed run or not
    assert deadlines and max(deadlines) <= t1 + again - used, (deadlines, t1, used, out[-3000:])
    assert (ws / "results" / "submission.csv").is_file() and not (ws / "results" / "run-run.json").exists()
    assert set(after.loc[after["tags.phase"] == "full", "status"]) == {"FINISHED"}   # the held one continued, a
    # full-data trial the killed driver never started started now
    record("run_budget_driver_killed", budget_s=budget, killed_at_s=round(killed_at, 1), used_before_s=used,
           rerun_s=round(rerun_s, 1), rerun_rc=rerun.returncode, closed=len(killed),
           trial_deadline_s=round(max(deadlines) - t1, 1) if deadlines else None,
           rerun_line=[ln for ln in out.splitlines() if ln.startswith(("budget:", "done in", "error:"))][-1:])
