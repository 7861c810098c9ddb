"""The resume path README names for a fold that failed for good in a study that trained to a
deadline (`run --budget`): `tune --phase cv --resume` trains it as its siblings trained, tested for
what it trains (how many epochs, under which deadline), not only for its exit code (real Ray, Tune,
MLflow). A rerun of `run` is tested on tests/test_run.py's smoke run."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

from conftest import workspace_sharing_crops
from core.errors import StudyFailed
from core.workspace import Workspace
from orchestrator.options import TuneOptions
from orchestrator.stages.tune import tune_head
from results.tracking import find_runs


@pytest.fixture(scope="module")
def run_ws(crops_ws, tmp_path_factory) -> tuple[Path, Workspace]:
    """(data, a private workspace sharing the session's crops)."""
    data, src = crops_ws
    return data, workspace_sharing_crops(src, tmp_path_factory.mktemp("resume"))


def _epochs_trained(uri: str, run_id: str) -> int:
    return max(m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, "train_loss"))


@pytest.mark.slow   # its folds train to a deadline 80 s away, by design: `make test-slow`
def test_a_failed_fold_resumed_without_deadline_trains_as_its_siblings_did(run_ws, tmp_path):
    """`tune --phase cv --resume`, the command the failed-fold error prints, on a study whose folds
    trained to a deadline with a cap of CAP epochs (as `run --budget` sets them up): the resumed fold
    trains as many epochs as its finished sibling did, not the cap, and with no deadline."""
    from tests.fault_gate import Crash, Gate
    data, ws = run_ws
    ws = ws.root
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
