"""Optuna's own views of a search study, as PNGs on the study's parent MLflow run, and which
parameter mattered most, in the run's description.

The study is the one Optuna itself kept while Tune ran it: Ray's OptunaSearch saves its state
(the Optuna study among it) as ``searcher-state-*.pkl`` in the phase's Tune folder, and a
``--resume`` restores the same file, so the plots hold every trial the searcher saw (its
objective: the trial's last reported validation F1).
"""
from __future__ import annotations

import logging
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.labels import SEED

log = logging.getLogger(__name__)

ARTIFACT_DIR = "search_plots"
TOP_PARAM_TAG = "top_param"
NOTE_TAG = "mlflow.note.content"       # the run's description in the MLflow UI
STATE_GLOB = "searcher-state-*.pkl"    # ray.tune.search.Searcher.CKPT_FILE_TMPL
IMPORTANCE_SEED = SEED                 # fANOVA's forest is random: the same study ranks the same way


@dataclass(frozen=True)
class SearchSummary:
    complete: int                                  # trials Optuna recorded as complete
    importances: dict = field(default_factory=dict)   # param -> importance, largest first ({}: not ranked)
    note: str = ""                                 # why a plot or the ranking is missing
    files: tuple[str, ...] = ()                    # PNG names written

    @property
    def top(self) -> str | None:
        return next(iter(self.importances), None)

    def line(self) -> str:
        head = f"search: {self.complete} trial(s) complete"
        if self.top is None:
            return f"{head}; {self.note}"
        ranked = ", ".join(f"{p} {v:.2f}" for p, v in self.importances.items())
        return f"{head}; {self.top} mattered most (fANOVA importance: {ranked})"


def load_study(tune_experiment: str):
    """The Optuna study saved with a Tune experiment (path or URI), or None where there is none."""
    import pyarrow.fs as pafs   # heavy; reads a local path or the s3://... of --storage alike
    fs, root = pafs.FileSystem.from_uri(tune_experiment if "://" in tune_experiment
                                        else str(Path(tune_experiment).resolve()))
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
             if Path(i.path).match(STATE_GLOB)]
    if not infos:
        return None
    newest = max(infos, key=lambda i: i.mtime_ns or 0)
    with fs.open_input_stream(newest.path) as f:
        state = pickle.load(f)   # Tune's own state file, as Tuner.restore reads it
    return state.get("_ot_study") if isinstance(state, dict) else None


def _importances(study, complete: list) -> tuple[dict, str]:
    """fANOVA importances, or {} and why they cannot be had (too few or identical trials)."""
    import optuna   # heavy, as matplotlib below: only after a search
    names = {p for t in complete for p in t.params}
    varying = {p for p in names if len({repr(t.params.get(p)) for t in complete}) > 1}
    if len(complete) < 2 or not varying:
        return {}, (f"too few trials to rank the parameters ({len(complete)} complete; importances need 2 or more "
                    "complete trials whose parameters differ): run more --num-samples")
    if len({t.value for t in complete}) == 1:
        return {}, f"every trial scored the same ({complete[0].value:.4g}): no parameter made a difference to rank"
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))
    except (ValueError, RuntimeError) as exc:   # fANOVA's own limits
        return {}, f"parameters not ranked: {exc}"
    return dict(imp), ""


def write_plots(study, out: Path) -> SearchSummary:
    """optimization_history.png, param_importances.png, parallel_coordinate.png and slice.png
    (those the trials allow) in ``out``."""
    import matplotlib   # heavy: only here, so the CLI's other paths never pay for it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna   # heavy, as matplotlib
    from optuna.visualization import matplotlib as views

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return SearchSummary(0, note="no trial completed: nothing to plot")
    importances, note = _importances(study, complete)
    plots = {"optimization_history": lambda: views.plot_optimization_history(study),
             "parallel_coordinate": lambda: views.plot_parallel_coordinate(study),
             "slice": lambda: views.plot_slice(study)}
    if importances:
        plots["param_importances"] = lambda: views.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))
    files = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)   # a few trials give axes of zero range
            axes = plot()
        fig = _figure(axes)
        fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append(f"{name}.png")
    return SearchSummary(len(complete), importances, note, tuple(files))


def _figure(axes):
    return np.atleast_1d(axes).flat[0].figure   # plot_slice gives one Axes per parameter


def log_search_plots(uri: str, run_id: str, tune_experiment: str) -> SearchSummary:
    """Plots of the search saved with ``tune_experiment`` on the parent run ``run_id``; its
    description and tag ``top_param`` say which parameter mattered most (or why none is named)."""
    from mlflow import MlflowClient   # heavy, as optuna
    study = load_study(tune_experiment)
    if study is None:
        summary = SearchSummary(0, note=f"no Optuna study saved in {tune_experiment}: no plots")
    else:
        with tempfile.TemporaryDirectory(prefix="search-plots-") as tmp:
            summary = write_plots(study, Path(tmp))
            client = MlflowClient(uri)
            for f in summary.files:
                client.log_artifact(run_id, str(Path(tmp) / f), ARTIFACT_DIR)
    client = MlflowClient(uri)
    client.set_tag(run_id, TOP_PARAM_TAG, summary.top or "none")
    client.set_tag(run_id, NOTE_TAG, summary.line())
    return summary
