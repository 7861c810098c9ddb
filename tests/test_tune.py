"""tune / retrain on real Ray + Optuna + MLflow (SQLite in a tmp dir), tiny models on CPU."""
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import workspace_sharing_crops
from fault_gate import Crash, Gate
from mlflow.tracking import MlflowClient

from core.errors import DataError
from orchestrator.cli import main
from orchestrator.stages.retrain import retrain_head
from orchestrator.stages.tune import SEARCHED, StudyInterrupted, TuneOptions, tune_head
from results.tracking import TrackingError, check_tracking, download_artifact, download_model, find_runs
from trainables.models import load_model_file, read_model_extra
from trainables.predict import predict_probs


@pytest.fixture(scope="module")
def tws(crops_ws, tmp_path_factory):
    """A private workspace (own MLflow SQLite and Tune storage) sharing the session's crops."""
    data, src = crops_ws
    return data, workspace_sharing_crops(src, tmp_path_factory.mktemp("tune_ws"))


def uri(ws):
    return ws.tracking_uri()


def smoke(**kw) -> TuneOptions:
    return TuneOptions(smoke_test=True, verbose=0, **kw)


def metric_steps(ws, run_id, key="val_f1"):
    return [m.step for m in MlflowClient(uri(ws)).get_metric_history(run_id, key)]


# mask: 3 classes, search + cv (retrain uses it); gender: 2 classes, a one-trial search (every
# head is a row of one table: tests/test_trainables.py builds and trains each row's model)
@pytest.mark.parametrize("head,extra", [
    ("mask", []),
    ("gender", ["--phase", "search", "--num-samples", "1"]),
])
def test_cli_smoke_test_leaves_mlflow_runs_with_a_loadable_model(ray_local, tws, head, extra):
    data, ws = tws
    rc = main(["tune", "--head", head, "--smoke-test", "--data", str(data), "--workspace", str(ws.root),
               "--log-level", "WARNING"] + extra)
    assert rc == 0
    runs = find_runs(uri(ws), head=head, study=f"{head}-smoke")
    search = runs[runs["tags.phase"] == "search"]
    assert len(search) == (2 if head == "mask" else 1) and set(search["status"]) == {"FINISHED"}
    assert search["tags.trial_id"].is_unique and set(search["tags.stage"]) == {"tune"}
    parent = find_runs(uri(ws), head=head, study=f"{head}-smoke", phase="search", role="study")
    assert len(parent) == 1 and set(search["tags.mlflow.parentRunId"]) == {parent["run_id"][0]}
    # Optuna's plots of the search on its parent run; its description names the top parameter, or
    # why none is named (one trial; smoke trials that all score alike)
    plots = {a.path for a in MlflowClient(uri(ws)).list_artifacts(parent["run_id"][0], "search_plots")}
    top, note = parent["tags.top_param"][0], parent["tags.mlflow.note.content"][0]
    views = {"optimization_history", "parallel_coordinate", "slice"} | ({"param_importances"} if top != "none" else set())
    assert plots == {f"search_plots/{v}.png" for v in views}
    assert note.startswith(f"search: {len(search)} trial(s) complete; ")
    if top != "none":
        assert top in SEARCHED and f"{top} mattered most" in note
    elif head == "mask":
        assert "every trial scored the same" in note or "not ranked" in note, note
    else:
        assert "too few trials to rank the parameters (1 complete" in note, note
    run = search.iloc[0]
    assert metric_steps(ws, run["run_id"]) == [1]
    assert {"metrics.val_f1", "metrics.val_loss", "metrics.val_acc", "metrics.train_loss",
            "metrics.best_val_f1", "metrics.best_epoch"} <= set(run.dropna().index)
    model, cfg = load_model_file(download_model(uri(ws), run["run_id"]))
    assert cfg.head == head and cfg.fold == int(run["tags.fold"])
    oof = pd.read_parquet(download_artifact(uri(ws), run["run_id"], "oof/predictions.parquet"))
    n_cls = {"mask": 3, "gender": 2}[head]
    p = [f"p{i}" for i in range(n_cls)]   # views averaged, then each view apart
    assert list(oof.columns) == ["path"] + p + [f"{v}_{c}" for v in ("orig", "hflip") for c in p]
    assert np.allclose(oof[p].sum(1), 1, atol=1e-5)
    man = pd.read_parquet(ws.manifest).set_index("path")
    probs = predict_probs(model, cfg, [ws.crops / c for c in man.loc[oof["path"][:4], "crop"]])
    assert np.allclose(probs, oof[p].iloc[:4].to_numpy(), atol=1e-4)   # OOF = predict_probs with TTA
    assert set(run["tags.input.folds"].split("-")) >= {"person_k2_seed777"}   # the study's inputs, as tags
    if head == "mask":
        cv = runs[runs["tags.phase"] == "cv"].sort_values("tags.fold")
        assert list(cv["tags.fold"]) == ["0", "1"] and set(cv["status"]) == {"FINISHED"}
        assert cv["tags.config_json"].nunique() == 2   # the same config except the fold


def test_retrain_uses_median_cv_epoch_on_all_data(ray_local, tws):
    data, ws = tws
    [run_id] = retrain_head(data, ws, "mask", study="mask-smoke", verbose=0)
    run = MlflowClient(uri(ws)).get_run(run_id)
    tags = run.data.tags
    assert (tags["phase"], tags["stage"], tags["fold"], tags["study"]) == ("full", "full", "all", "mask-smoke")
    assert tags["cv_best_epochs"] == "1,1" and run.info.status == "FINISHED"
    assert "train_loss" in run.data.metrics and "val_f1" not in run.data.metrics
    path = download_model(uri(ws), run_id)
    model, cfg = load_model_file(path)
    assert cfg.fold == -1 and cfg.epochs == 1 and read_model_extra(path)["best_epoch"] == 1
    with pytest.raises(DataError, match="no finished cv runs for head 'age'"):
        retrain_head(data, ws, "age", study="age-smoke", verbose=0)


def test_killed_trial_is_retried_from_its_checkpoint(ray_local, tws, tmp_path, caplog):
    data, ws = tws
    caplog.set_level("INFO", logger="orchestrator.study.progress")
    with Crash("epoch", epoch=1, phase="search") as crash:   # after epoch 1's checkpoint
        tune_head(data, ws, "gender", replace(smoke(phase="search", num_samples=1, trial=dict(epochs=2, search_folds=2),
                                                    study="crash"), verbose=1))
    assert crash.crashed(), "the worker process did not exit mid-trial"
    # the status table a person watches: the phase, its trials, their epoch and F1
    table = [r.getMessage() for r in caplog.records if r.name == "orchestrator.study.progress"][-1]
    assert table.startswith("crash · search: 0 running, 1 done, 0 failed | ") and "elapsed" in table
    assert "epoch  val_f1  best_val_f1" in table and " 2/2 " in table
    runs = find_runs(uri(ws), study="crash")
    assert len(runs) == 1 and runs["status"][0] == "FINISHED"   # the retry continued its own run
    assert metric_steps(ws, runs["run_id"][0]) == [1, 2]        # epoch 1 was not trained again
    oof = pd.read_parquet(download_artifact(uri(ws), runs["run_id"][0], "oof/predictions.parquet"))
    assert len(oof) == 30 * 7 and oof["path"].is_unique         # --search-folds 2: both folds' OOF


def test_interrupted_study_resumes_without_redoing_finished_trials(ray_local, tws):
    data, ws = tws
    opts = smoke(phase="search", num_samples=4, trial=dict(epochs=3), max_concurrent=1, study="resume")

    def interrupt(held):   # Ctrl-C's twin for Tune (SIGUSR1), then the held trial goes on
        os.kill(os.getpid(), signal.SIGUSR1)
        gate.release()

    # one trial at a time: the 2nd is held after its 1st checkpoint, so the 1st has finished
    with Gate("epoch", epoch=1, trial=2) as gate:
        watcher = gate.then(interrupt)
        with pytest.raises(StudyInterrupted, match="--resume") as stop:
            tune_head(data, ws, "mask", opts)
    watcher.join()
    assert gate.reached(), "the study ended before its 2nd trial reached the gate"
    before = find_runs(uri(ws), study="resume")
    done = before[before["tags.trial_id"].isin(stop.value.finished)]
    assert len(done) == len(stop.value.finished) < 4
    with pytest.raises(DataError, match="pass --resume"):
        tune_head(data, ws, "mask", opts)
    tune_head(data, ws, "mask", TuneOptions(**{**opts.__dict__, "resume": True}))
    after = find_runs(uri(ws), study="resume")
    assert len(after) == 4 and after["tags.trial_id"].is_unique and set(after["status"]) == {"FINISHED"}
    for _, r in after.iterrows():   # interrupted trials continued from their checkpoints, in their own run
        assert sorted(set(metric_steps(ws, r["run_id"]))) == [1, 2, 3]
    for _, r in done.iterrows():    # finished trials were not run again
        assert metric_steps(ws, r["run_id"]) == [1, 2, 3]


def test_unreachable_tracking_server_is_reported_before_training(tmp_path, crops_ws):
    t0 = time.time()
    with pytest.raises(TrackingError, match="unreachable.*--tracking-uri"):
        check_tracking("http://127.0.0.1:9")
    assert time.time() - t0 < 30
    data, _ = crops_ws
    rc = main(["tune", "--head", "age", "--smoke-test", "--data", str(data), "--workspace", str(tmp_path / "ws"),
               "--tracking-uri", "http://127.0.0.1:9"])
    assert rc == 2 and not (tmp_path / "ws" / "tune" / "age-smoke-search").exists()


def test_a_fold_that_fails_for_good_stops_the_study_and_resumes_with_this_runs_deadline(ray_local, tws, tmp_path):
    """A cv fold whose retries are spent stops the study with its fold, run and error (the
    ensemble refuses the study meanwhile); `--resume` continues that fold from its checkpoint,
    under the deadline of the resuming run, not the one saved in its config."""
    from mlflow import MlflowClient as Client

    from core.errors import StudyFailed
    from results.selection import default_models
    data, ws = tws

    def voters():   # the ensemble's default pick of the study's mask models (results/selection.py)
        client = Client(uri(ws))
        exp = client.get_experiment_by_name("orchestrator").experiment_id
        return default_models(client, exp, "orchestrator", "mask", "foldfail", include_full=False)

    first, second = time.time() + 3600, time.time() + 1800
    opts = smoke(phase="cv", num_samples=0, trial=dict(epochs=2), max_concurrent=1, study="foldfail", max_failures=0,
                 deadline=first)
    with Crash("epoch", epoch=1, phase="cv") as crash, \
            pytest.raises(StudyFailed, match=r"fold \d \(MLflow run [0-9a-f]{32}; log in .*\): .*--phase cv --resume"):
        tune_head(data, ws, "mask", opts)
    assert crash.crashed()
    runs = find_runs(uri(ws), study="foldfail")
    assert sorted(runs["status"]) == ["FAILED", "FINISHED"]
    failed = runs.loc[runs["status"] == "FAILED"].iloc[0]
    with pytest.raises(DataError, match=f"cv fold {failed['tags.fold']} has no finished run .*{failed['run_id']}"):
        voters()
    tune_head(data, ws, "mask", replace(opts, resume=True, deadline=second))
    after = find_runs(uri(ws), study="foldfail").set_index("run_id")
    assert len(after) == 2 and set(after["status"]) == {"FINISHED"}         # the failed fold's own run
    assert metric_steps(ws, failed["run_id"]) == [1, 2]                     # went on from epoch 1
    assert float(after.loc[failed["run_id"], "tags.deadline"]) == pytest.approx(second, abs=0.1)
    assert len(voters()) == 2


def test_no_search_trial_starts_after_the_search_deadline_but_the_first(ray_local, tws):
    data, ws = tws
    opts = smoke(phase="search", num_samples=3, max_concurrent=1, study="late", deadline=time.time() - 1)
    tune_head(data, ws, "gender", opts)   # fewer trials than asked is the plan, not an interruption
    runs = find_runs(uri(ws), study="late")
    assert len(runs) == 1 and runs["status"][0] == "FINISHED"
    assert metric_steps(ws, runs["run_id"][0]) == [1]   # its one epoch, annealed over its own steps
    # a trial's scratch (its best model on its way to MLflow) lives in its own folder, gone at its end
    assert not [p for p in ws.scratch.rglob("*") if p.is_file()], "a trial left its scratch files behind"



def test_a_results_trial_id_is_the_one_tune_gave_it(ray_local, tmp_path):
    """result_trial_id reads the id through Tune's Result, also for a trial that never reported."""
    from ray import tune

    from orchestrator.stages.tune import result_trial_id

    def note_trial_id(config):   # defined here: Ray's workers cannot import this test module
        Path(config["notes"], str(config["i"])).write_text(tune.get_context().get_trial_id())
        if config["i"] == 1:
            raise RuntimeError("fails before its first report")
        tune.report({"val_f1": 0.5})
    notes = tmp_path / "notes"
    notes.mkdir()
    grid = tune.Tuner(note_trial_id, param_space={"i": tune.grid_search([0, 1]), "notes": str(notes)},
                      run_config=tune.RunConfig(name="ids", storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    assert sorted(r.error is None for r in grid) == [False, True]
    for r in grid:
        assert result_trial_id(r) == (notes / str(r.config["i"])).read_text()
