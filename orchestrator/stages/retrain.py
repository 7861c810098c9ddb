"""`retrain --head H`: the study's best config on ALL training persons, for the median of
the epochs at which its person-level cv folds peaked (the recipe's key trick).

Runs as one Ray Tune trial (so it gets a GPU on a cluster, retries from checkpoints and
logs like every trial): an MLflow run tagged phase=full, stage=full, fold=all with its model.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.deadlines import set_deadline
from core.errors import DataError
from core.label_table import current_labels
from core.workspace import Workspace
from orchestrator.infra.ray_session import ray_session, trial_resources
from orchestrator.infra.storage import warn_if_not_shared
from orchestrator.options import GPU_SHARE, RetrainOptions
from orchestrator.study.pins import check_study_data
from results.run_schema import EXPERIMENT, close_parent, ensure_experiment, open_parent
from results.tracking import check_tracking, find_runs, resolve_tracking_uri, run_config
from trainables.config import FULL_DATA, RunContext, TrialConfig

from .tune import build_tuner, check_failed, check_trained_labels, check_weights, trial_trainable

log = logging.getLogger(__name__)


def cv_runs(uri: str, head: str, study: str | None, experiment: str = EXPERIMENT):
    """(study, its finished cv runs); ``study=None`` takes the head's newest study with cv runs."""
    runs = find_runs(uri, head=head, study=study, phase="cv", experiment=experiment)
    if "metrics.best_epoch" in runs:
        runs = runs[(runs["status"] == "FINISHED") & runs["metrics.best_epoch"].notna()]
    else:
        runs = runs.iloc[:0]
    if runs.empty:
        which = f"study {study!r}" if study else "any study"
        raise DataError(f"no finished cv runs for head {head!r} in {which} ({uri}); run "
                        f"`python -m orchestrator tune --head {head}` (phase cv) first")
    study = study or runs.iloc[0]["tags.study"]
    return study, runs[runs["tags.study"] == study]


def full_data_config(runs) -> tuple[TrialConfig, list[int]]:
    """The cv config on all data, for the median of the folds' best epochs."""
    best_epochs = sorted(int(e) for e in runs["metrics.best_epoch"])
    # half up, as a person would: round() goes to the even number ([2, 3] -> 2 but [3, 4] -> 4)
    epochs = max(1, math.floor(float(np.median(best_epochs)) + 0.5))
    cfg = TrialConfig.from_dict(run_config(runs.iloc[0]))
    return replace(cfg, fold=FULL_DATA, epochs=epochs), best_epochs


def _restored(path: str, trainable):
    """The retrain Tune experiment at ``path`` restored (None: there is none): finished trials are
    not rerun, unfinished and failed ones continue from their last checkpoints."""
    from ray.tune import Tuner
    if not Tuner.can_restore(path):
        return None
    log.info("full-data retrain: continuing %s (finished models are reused)", path)
    return Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)


def retrain_head(data: Path | str, ws: Workspace | Path | str, head: str, study: str | None = None,
                 tracking_uri: str | None = None, *, experiment: str = EXPERIMENT,
                 gpus_per_trial: float = GPU_SHARE, cpus_per_trial: float | None = None, address: str | None = None,
                 num_cpus: int | None = None, max_failures: int = 2, verbose: int = 1,   # as TuneOptions.verbose
                 deadline: float = 0.0, epochs: int | None = None, seeds: int = RetrainOptions.seeds,
                 resume: bool = False) -> list[str]:
    """Train the full-data model(s); returns their MLflow run ids.

    ``resume`` (`run`, which a rerun continues): the study's one full-data Tune experiment,
    restored when it exists, so finished full-data trials are reused and unfinished ones continue
    from their checkpoints; else (the `retrain` command) a new, timestamped retrain.

    ``seeds`` > 1 trains that many full-data models side by side (seeds seed, seed+1, ...), as
    parallel trials: on a cluster with free slots they cost no extra time, and every one of
    them votes in the default ensemble (they share the run tag ``retrain``).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    from ray import tune  # heavy (ray): imported when trials start
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    uri = resolve_tracking_uri(ws, tracking_uri)
    check_tracking(uri)
    study, runs = cv_runs(uri, head, study, experiment)
    _, labels = current_labels(data, ws)
    check_trained_labels(runs, labels, f"these are the cv runs of study {study!r}; train a new study first "
                         f"(`python -m orchestrator tune --head {head} --study NEW_NAME`)")
    cfg, best_epochs = full_data_config(runs)
    check_weights(cfg)   # the cv trials' starting weights, before Ray (offline: stop here)
    if epochs is not None:   # `run --budget` may afford fewer epochs than the folds peaked at; with
        # a deadline the trials train until it, annealed to it (trainables/schedule.py): a cap only
        cfg = replace(cfg, epochs=max(1, epochs if deadline else min(cfg.epochs, epochs)))
    until = f"until its deadline (at most {cfg.epochs} epochs)" if deadline else f"{cfg.epochs} epochs"
    log.info(f"retrain {head} (study {study!r}): cv folds peaked at epochs {best_epochs} -> "
             f"{until} on all training persons")
    from trainables.data import usable_train_rows  # heavy (torch), as the trainable above
    pins = check_study_data(ws, study, labels, usable_train_rows(ws))
    exp_id = ensure_experiment(uri, experiment, ws.root / "mlartifacts", location=ws.artifact_location)
    parent = open_parent(uri, exp_id, study=study, phase="full", head=head, pins=pins)
    ctx = RunContext(data=str(Path(data).resolve()), workspace=str(ws.root), tracking_uri=uri,
                     experiment=experiment, study=study, phase="full", parent_run_id=parent,
                     deadline=deadline, labels=labels, pins=pins)
    name = f"{study}-full" if resume else f"{study}-full-{time.strftime('%Y%m%d-%H%M%S')}"
    space = cfg.to_dict() | {"run": ctx.to_dict()}
    if seeds > 1:
        space["seed"] = tune.grid_search([cfg.seed + i for i in range(seeds)])
    set_deadline(ws.root, study, "full", deadline)   # what its trials read (core/deadlines.py)
    with ray_session(address, num_cpus):
        warn_if_not_shared(ws, uri, address=address)
        trainable = trial_trainable(trial_resources(gpus_per_trial, cpus_per_trial))
        tuner = _restored(ws.tune_experiment(name), trainable) if resume else None
        tuner = tuner or build_tuner(trainable, space, name=name, ws=ws, max_failures=max_failures,
                                     verbose=verbose, label=f"{study} · full", deadline=(study, "full"))
        results = list(tuner.fit())
    if any(r.error is not None for r in results):
        close_parent(uri, parent, "FAILED")
    check_failed(results, f"study {study!r} (full-data retrain)",
                 f"`python -m orchestrator retrain --head {head} --study {study}` (a new retrain), or rerun `run`")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    run_ids = [r.metrics["mlflow_run_id"] for r in results]
    for run_id in run_ids:
        client.set_tag(run_id, "cv_best_epochs", ",".join(map(str, best_epochs)))
        client.set_tag(run_id, "retrain", name)   # the models of one retrain vote together
    close_parent(uri, parent)
    return run_ids
