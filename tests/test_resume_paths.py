"""Every resume path README names, tested for what it trains (which trials run again, how many
epochs, under which deadline), not only for its exit code: a rerun of `run`, and `tune --phase cv
--resume` after a fold failed for good in a study that trained to a deadline (`run --budget`).
One `run --smoke-test` workspace serves every test here (real Ray, Tune, MLflow)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

from core.demo_data import DemoSpec, write_demo_data
from core.errors import StudyFailed
from core.workspace import Workspace
from orchestrator.cli import main
from orchestrator.options import TuneOptions
from orchestrator.stages.tune import tune_head
from results.tracking import find_runs


@pytest.fixture(scope="module")
def run_ws(tmp_path_factory) -> tuple[Path, Path]:
    """(data, workspace) of one finished `run --smoke-test`."""
    root = tmp_path_factory.mktemp("resume")
    write_demo_data(root / "data", DemoSpec(train_persons=16, eval_persons=4))
    assert main(["run", "--data", str(root / "data"), "--workspace", str(root / "ws"), "--smoke-test"]) == 0
    return root / "data", root / "ws"


def _trial_runs(ws: Path, phase: str, study: str | None = None) -> set[str]:
    return set(find_runs(Workspace(ws).tracking_uri(), phase=phase, study=study)["run_id"])


def test_a_rerun_of_run_trains_nothing_finished_again(run_ws):
    """Seen: a second `run --smoke-test` on a finished workspace took the full-data trial runs from
    2 to 4 (each retrain was a new Tune experiment). Finished trials are reused: none runs again."""
    data, ws = run_ws
    before = {p: _trial_runs(ws, p) for p in ("cv", "full")}
    assert before["full"] and before["cv"]
    assert main(["run", "--data", str(data), "--workspace", str(ws), "--smoke-test"]) == 0
    after = {p: _trial_runs(ws, p) for p in ("cv", "full")}
    assert after == before, "a rerun trained finished trials again"


def _epochs_trained(uri: str, run_id: str) -> int:
    return max(m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, "train_loss"))


@pytest.mark.slow   # its folds train to a deadline 80 s away, by design: `make test-slow`
def test_a_failed_fold_resumed_without_deadline_trains_as_its_siblings_did(run_ws, tmp_path):
    """`tune --phase cv --resume`, the command the failed-fold error prints, on a study whose folds
    trained to a deadline with a cap of CAP epochs (as `run --budget` sets them up): the resumed fold
    trains as many epochs as its finished sibling did, not the cap, and with no deadline."""
    from tests.fault_gate import Crash, Gate
    data, ws = run_ws
    cap = 400   # the cap (`run --max-epochs`): the deadline ends the folds long before it
    opts = TuneOptions(smoke_test=True, phase="cv", num_samples=0, folds=2, study="to-deadline", max_failures=0,
                       trial=dict(epochs=cap), deadline=time.time() + 80, verbose=0)
    # both folds wait, started, before their first epoch until 20 s before the deadline: they train
    # for about that long however slowly this machine started them (the cap is never in reach)
    # (the gate first: arming it clears the point's files; then the first fold past epoch 1 dies, for good)
    with Gate("epoch", holders=2, epoch=0, phase="cv") as gate, Crash("epoch", epoch=1, phase="cv"):
        gate.then(lambda held: (time.sleep(max(0.0, opts.deadline - 20 - time.time())), gate.release()))
        with pytest.raises(StudyFailed):
            tune_head(data, Workspace(ws), "all", opts)
    uri = Workspace(ws).tracking_uri()
    runs = find_runs(uri, study="to-deadline", phase="cv").set_index("tags.fold")
    failed = runs.index[runs["status"] == "FAILED"].tolist()
    assert len(failed) == 1, runs["status"]
    sibling = _epochs_trained(uri, runs.loc[runs["status"] == "FINISHED", "run_id"].iloc[0])
    assert 1 < sibling < cap   # trained to the deadline, not to the cap
    # what the error tells the user to type: the same study, --resume, no deadline
    tune_head(data, Workspace(ws), "all", replace(opts, deadline=0.0, resume=True))
    resumed = find_runs(uri, study="to-deadline", phase="cv").set_index("tags.fold").loc[failed[0]]
    assert resumed["run_id"] == runs.loc[failed[0], "run_id"]   # it continued its own MLflow run
    assert resumed["status"] == "FINISHED"
    assert _epochs_trained(uri, resumed["run_id"]) == sibling


# -- a refused command leaves the workspace as it was (here: the workspace these tests share) ----
def test_a_run_refused_after_preprocess_leaves_the_labels_as_they_were(run_ws, tmp_path, capsys):
    """A late DataError (more folds than persons, found after `run`'s preprocess rewrote the manifest
    with the corrected labels) used to roll back the corrections record but not the manifest, so
    every later command asked to "rerun preprocess"."""
    import pandas as pd

    from core.label_table import corrections_file, current_labels
    data, ws = run_ws
    persons = pd.read_csv(data / "train" / "train.csv", dtype=str)["id"]
    corr = tmp_path / "ages.csv"
    pd.DataFrame({"id": persons, "field": "age", "value": "70"}).to_csv(corr, index=False)
    manifest = Workspace(ws).manifest.read_bytes()
    code = main(["run", "--data", str(data), "--workspace", str(ws), "--smoke-test", "--folds", "40",
                 "--corrections", str(corr)])
    err = capsys.readouterr().err
    assert code == 2 and "40 person-level folds need at least 40 persons" in err, err
    assert corrections_file(Workspace(ws)) is None
    assert Workspace(ws).manifest.read_bytes() == manifest
    current_labels(data, Workspace(ws))   # no "rerun preprocess": the labels are the workspace's again
