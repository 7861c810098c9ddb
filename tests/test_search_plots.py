"""Optuna's plots of a search on its parent MLflow run (results/search_plots.py), without a cluster:
Ray's OptunaSearch asks the head's real search space and saves its state as Tune does, a real
SQLite store takes the plots. (tests/test_tune.py checks the same on a real Ray Tune search.)"""
import math

import pytest
from mlflow import MlflowClient
from mlflow_runs import store

from results.run_schema import EXPERIMENT
from results.search_plots import log_search_plots
from search_spaces import search_space

VIEWS = {"optimization_history", "parallel_coordinate", "slice"}


def saved_search(folder, scores) -> None:
    """A search as Tune runs it: OptunaSearch suggests, hears each trial's val_f1 (``scores``: a
    function of the config) and saves its state in ``folder``."""
    from ray.tune.search.optuna import OptunaSearch
    searcher = OptunaSearch(search_space("mask"), metric="val_f1", mode="max", seed=777)
    for i, score in enumerate(scores):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"val_f1": score(config)})
    searcher.save_to_dir(str(folder), session_str="test")


@pytest.fixture
def parent(tmp_path):
    client = store(tmp_path / "ws")
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.tracking_uri, client.create_run(exp).info.run_id


def plots_of(uri, run_id) -> set[str]:
    return {a.path.removeprefix("search_plots/").removesuffix(".png")
            for a in MlflowClient(uri).list_artifacts(run_id, "search_plots")}


def test_the_parameter_that_decides_the_score_is_named(parent, tmp_path):
    uri, run_id = parent
    saved_search(tmp_path, [lambda c: 1 - abs(math.log10(c["lr"]) + 4)] * 12)   # only lr matters
    summary = log_search_plots(uri, run_id, str(tmp_path))
    assert summary.complete == 12 and summary.top == "lr"
    assert plots_of(uri, run_id) == VIEWS | {"param_importances"}
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["top_param"] == "lr" and "lr mattered most" in tags["mlflow.note.content"]
    png = MlflowClient(uri).download_artifacts(run_id, "search_plots/param_importances.png", str(tmp_path / "dl"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("scores,why", [
    ([lambda c: 0.5], "too few trials to rank the parameters (1 complete"),
    ([lambda c: 0.5] * 3, "every trial scored the same (0.5)"),
])
def test_a_search_too_small_to_rank_says_so(parent, tmp_path, scores, why):
    uri, run_id = parent
    saved_search(tmp_path, scores)
    summary = log_search_plots(uri, run_id, str(tmp_path))
    assert summary.top is None and why in summary.note
    assert plots_of(uri, run_id) == VIEWS
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["top_param"] == "none" and why in tags["mlflow.note.content"]


def test_no_saved_search_leaves_a_note_not_a_crash(parent, tmp_path):
    uri, run_id = parent
    summary = log_search_plots(uri, run_id, str(tmp_path / "nothing-here"))
    assert summary.complete == 0 and "no Optuna study saved" in summary.note and not plots_of(uri, run_id)
