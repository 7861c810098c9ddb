"""The `run` ledger: a rerun after a kill counts the killed run's seconds and closes its runs."""
import json
import os

import pytest
from mlflow.tracking import MlflowClient

from core.errors import DataError
from core.workspace import Workspace
from orchestrator.chain.ledger import _proc_start, run_ledger
from results.tracking import ensure_experiment, find_runs


def _killed_ledger(ws, used_s, pid=2**22 + 1):
    (ws.results / "run-run.json").write_text(json.dumps({"pid": pid, "host": os.uname().nodename,
                                                         "proc_start": "1", "budget_s": 100, "used_s": used_s}))


def test_rerun_after_a_kill_counts_its_seconds_and_closes_its_runs(tmp_path, capsys):
    ws = Workspace(tmp_path / "ws").make()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = ensure_experiment(uri, "orchestrator", tmp_path / "art")
    live = client.create_run(exp, tags={"role": "trial", "study": "run-all", "phase": "full"}).info.run_id
    done = client.create_run(exp, tags={"role": "trial", "study": "run-all", "phase": "cv"}).info.run_id
    client.set_terminated(done, "FINISHED")
    _killed_ledger(ws, used_s=40)
    with run_ledger(ws, "run", 100, uri, ["run-all"]) as clock:
        assert 59 <= clock.left() <= 60 and (ws.results / "run-run.json").is_file()
    assert not (ws.results / "run-run.json").exists()        # a finished run leaves no ledger
    runs = find_runs(uri, study="run-all").set_index("run_id")["status"]
    assert runs[live] == "KILLED" and runs[done] == "FINISHED"
    assert "40 s of the 100 s budget used by the stopped run: 60 s left" in capsys.readouterr().out


def test_a_rerun_closes_the_runs_of_the_killed_runs_studies_it_does_not_train(tmp_path):
    """`run --head-backbone gender=resnet10t-64` killed, then a plain `run`: run-gender is not
    among this run's studies, yet its trials were left RUNNING by the killed run."""
    ws = Workspace(tmp_path / "ws").make()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = ensure_experiment(uri, "orchestrator", tmp_path / "art")
    with pytest.raises(KeyboardInterrupt):
        with run_ledger(ws, "run", 100, uri, ["run-all", "run-gender"]):
            live = client.create_run(exp, tags={"role": "trial", "study": "run-gender", "phase": "cv"}).info.run_id
            raise KeyboardInterrupt
    with run_ledger(ws, "run", 100, uri, ["run-all"]):
        pass
    assert find_runs(uri, study="run-gender").set_index("run_id")["status"][live] == "KILLED"


def test_a_spent_budget_or_a_live_run_is_refused(tmp_path):
    ws = Workspace(tmp_path / "ws").make()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _killed_ledger(ws, used_s=120)
    with pytest.raises(DataError, match="used 120 s, all of the 100 s budget.*raise --budget"):
        with run_ledger(ws, "run", 100, uri, ["run-all"]):
            pass
    (ws.results / "run-run.json").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                         "proc_start": _proc_start(), "used_s": 1}))
    with pytest.raises(DataError, match=f"another `run` \\(pid {os.getpid()}\\)"):
        with run_ledger(ws, "run", None, uri, ["run-all"]):
            pass


def test_a_failed_run_keeps_its_ledger(tmp_path, capsys):
    """A failed run's seconds stay counted; the process that ran it (a caller of run_all that goes
    on, as the suite does) is not taken for a run still working: seen refused as "another `run`
    (pid <its own>)" after a refused run in the same process."""
    ws = Workspace(tmp_path / "ws").make()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError):
        with run_ledger(ws, "run", 100, uri, ["run-all"]):
            raise RuntimeError("boom")
    left = json.loads((ws.results / "run-run.json").read_text())
    assert left["budget_s"] == 100 and left["stopped"] == "RuntimeError" and left["pid"] == os.getpid()
    with run_ledger(ws, "run", 100, uri, ["run-all"]) as clock:   # the next run, same process
        assert clock.left() <= 100 - left["used_s"]
    assert "the last run of study 'run' stopped unfinished" in capsys.readouterr().out


def test_a_budget_too_small_leaves_the_ledger_as_it_was(tmp_path):
    from orchestrator.chain.budget import BudgetTooSmall
    ws = Workspace(tmp_path / "ws").make()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(BudgetTooSmall):
        with run_ledger(ws, "run", 5, uri, ["run-all"]):
            raise BudgetTooSmall("budget too small")
    assert not (ws.results / "run-run.json").exists()        # nothing charged
    _killed_ledger(ws, used_s=40)
    killed = json.loads((ws.results / "run-run.json").read_text())
    with pytest.raises(BudgetTooSmall):
        with run_ledger(ws, "run", 45, uri, ["run-all"]):
            raise BudgetTooSmall("budget too small")
    assert json.loads((ws.results / "run-run.json").read_text()) == killed   # the killed run's count only
