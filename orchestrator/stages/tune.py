"""`tune --head H`: one Ray Tune study for one head, in two phases.

search: OptunaSearch (seeded, the recipe evaluated first) + ASHA on the head's val macro F1,
        each trial on the search fold;
cv:     the best config trained on every fold as parallel trials; each fold's best model and
        best epoch are what the ensemble votes with and what the full-data retrain uses.
Every trial logs to MLflow from inside (results/trial_log.py); selection reads MLflow.

The module reads in the order a study runs: tune_head; preparing a study (plan, weights,
labels); the tuners (new or restored); the search phase; the cv phase; fitting a phase and its
failures; Tune's saved state; the results table.
"""
from __future__ import annotations

import logging
import shlex
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import pandas as pd

from core.deadlines import current_deadline, set_deadline
from core.errors import DataError, StudyFailed
from core.folds import FoldSpec, ensure_folds
from core.label_table import check_runs_labels, current_labels
from core.labels import Backbone, check_target, get_backbone
from core.workspace import Workspace
from orchestrator.infra.ray_session import auto_concurrency, ray_session, trial_resources
from orchestrator.infra.storage import warn_if_not_shared
from orchestrator.options import TRIAL_FLAGS, TUNE_FLAGS, TuneOptions, flag_words
from orchestrator.study.pins import Pins, pin_study, study_pins
from orchestrator.study.tracking_outage import check_after_fit, outage_recorded
from results.run_schema import EXPERIMENT, close_parent, ensure_experiment, open_parent
from results.tracking import check_tracking, find_runs, resolve_tracking_uri, run_config
from search_spaces import SMOKE, recipe_config, recipe_point, search_space, with_backbones
from trainables.config import RunContext, TrialConfig
from trainables.pretrained import HUB, check_source, is_none, stage_weights

if TYPE_CHECKING:   # for the annotations only: ray is heavy, imported when trials start
    from ray.tune import Result, Tuner

log = logging.getLogger(__name__)
METRIC, MODE = "val_f1", "max"
SEARCHED = ("lr", "loss", "gamma", "smoothing", "strength", "old_from")  # may come from the space
BACKBONE_FIELDS = tuple(f.name for f in fields(Backbone))   # ... and these, when the backbone is searched


class StudyInterrupted(RuntimeError):
    """The study stopped before its trials finished (Ctrl-C); resume with --resume.
    ``finished``: ids of the trials Tune recorded as done (a resume does not rerun them)."""

    def __init__(self, message: str, finished: list[str] = ()):
        super().__init__(message)
        self.finished = list(finished)


def tune_head(data: Path | str, ws: Workspace | Path | str, head: str,
              options: TuneOptions = TuneOptions()) -> pd.DataFrame:
    """Run the study's phases; returns the best trials (search top 5 + every cv fold)."""
    plan = prepare(Path(data), ws if isinstance(ws, Workspace) else Workspace(ws), head, options)
    tables = []
    with ray_session(options.address, options.num_cpus):
        warn_if_not_shared(plan.ws, plan.uri, address=options.address)
        resources = trial_resources(options.gpus_per_trial, options.cpus_per_trial)
        concurrent = options.max_concurrent or auto_concurrency(resources)
        if options.phase in ("search", "both") and options.samples > 0:
            tables.append(run_search(plan, resources, concurrent))
        if options.phase in ("cv", "both"):
            tables.append(run_cv(plan, resources, concurrent))
    return pd.concat(tables, ignore_index=True)


# --- preparing a study: its plan, weights and labels ------------------------------------------


def base_config(head: str, o: TuneOptions) -> TrialConfig:
    """The recipe's config for ``head`` with the options' overrides (smoke: tiny and fast)."""
    over = (dict(SMOKE) if o.smoke_test else {}) | o.trial
    fold = 0 if o.fold == "all" else int(o.fold)
    return recipe_config(head, backbone=o.backbone, folds=o.k, fold_seed=o.seed, seed=o.seed, fold=fold, **over)


@dataclass(frozen=True)
class StudyPlan:
    """What every phase of one study shares."""
    head: str
    study: str
    ws: Workspace
    data: Path
    uri: str
    experiment_id: str
    base: TrialConfig
    options: TuneOptions
    labels: str = ""      # hash of the label table every trial trains on (core.label_table)
    pins: Pins | None = None   # the study's inputs (orchestrator.study.pins): every trial logs and reads them

    def context(self, phase: str, parent: str) -> RunContext:
        return RunContext(data=str(self.data), workspace=str(self.ws.root), tracking_uri=self.uri,
                          experiment=self.options.experiment, study=self.study, phase=phase,
                          parent_run_id=parent, deadline=self.options.deadline, labels=self.labels,
                          pins=self.pins.as_dict() if self.pins else {})

    def exp_path(self, phase: str) -> str:
        """The phase's Tune experiment: a path, or a URI with --storage s3://..."""
        return self.ws.tune_experiment(f"{self.study}-{phase}")


def prepare(data: Path, ws: Workspace, head: str, o: TuneOptions) -> StudyPlan:
    """Everything checked and made before Ray starts: the weights, MLflow reachable, folds, crop cache."""
    from trainables.data import usable_train_rows  # heavy (torch), as the trainable
    check_target(head)
    base, *searched = study_configs(head, o)
    check_study_weights([base, *searched])
    ws = (ws if isinstance(ws, Workspace) else Workspace(ws)).make()   # keeps --storage / --artifact-location
    base = replace(base, pretrained=stage_weights(base.pretrained, ws.weights))   # trials read the copy
    uri = resolve_tracking_uri(ws, o.tracking_uri)
    check_tracking(uri)
    exp_id = ensure_experiment(uri, o.experiment, ws.root / "mlartifacts", location=ws.artifact_location)
    table, labels = current_labels(data, ws)   # the manifest's labels = train.csv + corrections
    check_study_labels(uri, head, o.study_name(head), labels, o.experiment)
    spec, rows = FoldSpec(o.k, o.seed), usable_train_rows(ws)
    # the split first: one that cannot be made (more folds than persons) refuses the command before
    # a new study is pinned to it (a pin left behind would refuse the next, valid, command); a fold
    # file is addressed by the table it splits, so one made for a study refused below is never wrong
    ensure_folds(table, ws.root, spec)
    # the study's inputs, checked against what it was made from before anything else is made for it
    pins = pin_study(ws, o.study_name(head), study_pins(labels, table, rows, spec, base.to_dict() | {"num_samples": o.samples}),
                     what="resume" if o.resume else "new phase")
    cache_crops(ws, rows["crop"].tolist(), base, o.search_backbones)
    return StudyPlan(head, o.study_name(head), ws, Path(data).resolve(), uri, exp_id, base, o, labels, pins)


def study_configs(head: str, o: TuneOptions) -> list[TrialConfig]:
    """The study's base config, then one per backbone the search may pick: a trial setting one of
    them cannot take (`--freeze 9`, a scratch backbone beside `--freeze`) is a ValueError here,
    before anything starts (cli.py makes it a usage error), not in every trial."""
    base = base_config(head, o)
    return [base, *(replace(base, **asdict(get_backbone(b))) for b in o.search_backbones)]


def check_study_weights(configs: list[TrialConfig]) -> None:
    """The starting weights of every config (study_configs) can be had."""
    for cfg in configs:
        check_weights(cfg)


def check_weights(cfg: TrialConfig) -> None:
    """The starting weights can be had (hub reachable or cached; a file that fits the model),
    checked here on the driver so an offline box stops before Ray, not in every trial."""
    from trainables.models import build_model  # heavy (torch, timm), as the trainable
    if is_none(cfg.pretrained):
        return
    if cfg.pretrained == HUB:
        check_source(cfg.model, HUB)
    else:
        build_model(cfg)   # loads the file: another architecture's is a clear error
    log.info("%s starts from pretrained weights: %s", cfg.model, cfg.pretrained)


def check_trained_labels(runs: pd.DataFrame, labels: str, fix: str) -> None:
    """``runs`` (find_runs) were trained on the label table ``labels``, else DataError(fix)."""
    tags = runs["tags.labels"].fillna("") if "tags.labels" in runs else [""] * len(runs)
    check_runs_labels(dict(zip(runs["run_id"], tags)), labels, fix)


def check_study_labels(uri: str, head: str, study: str, labels: str, experiment: str) -> None:
    """A study goes on only with the labels its trials were trained on (a resume, or a new phase)."""
    check_trained_labels(find_runs(uri, head=head, study=study, experiment=experiment), labels,
                         f"study {study!r} was trained on them; start a new study with --study NEW_NAME "
                         "(`run`: --study NEW_PREFIX)")


def cache_crops(ws: Workspace, crops: list[str], base: TrialConfig, backbones: tuple[str, ...]) -> None:
    """The crops decoded once at every image size the study trains at, before any trial starts."""
    from trainables.data import crop_cache  # heavy (torch), as the trainable
    for size in sorted({base.img_size} | {get_backbone(b).img_size for b in backbones}):
        crop_cache(ws, crops, size)


# --- tuners: a new one, or a phase restored from its saved state ------------------------------


def trial_trainable(resources: dict):
    """The one trainable (trainables.trainable.train_head) with a trial's CPUs and GPUs."""
    from ray import tune  # heavy (torch, timm, ray): imported when trials start

    from trainables.trainable import train_head  # heavy, as ray
    return tune.with_resources(train_head, resources)


def build_tuner(trainable, space: dict, *, name: str, ws: Workspace, max_failures: int, verbose: int,
                label: str, deadline: tuple[str, str], **tune_config) -> Tuner:
    """The Tuner of search, cv and the full-data retrain: Tune storage in the workspace, a
    crashed trial retried from its last checkpoint (one kept), actors reused between trials,
    and (verbose >= 1) one progress line per phase instead of Tune's tables (verbose >= 2).
    ``deadline``: (study, phase) whose deadline file (core/deadlines.py) the progress shows."""
    from ray import tune  # heavy, as in trial_trainable

    from orchestrator.study.progress import PhaseProgress, quiet_snapshot_warning  # imports ray.tune: as heavy
    quiet_snapshot_warning(ws.tune_storage)
    return tune.Tuner(trainable, param_space=space,
                      tune_config=tune.TuneConfig(reuse_actors=True, **tune_config),
                      run_config=tune.RunConfig(name=name, storage_path=ws.tune_storage,
                                                failure_config=tune.FailureConfig(max_failures=max_failures),
                                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                                verbose=verbose if verbose >= 2 else 0,
                                                callbacks=[PhaseProgress(label, (str(ws.root), *deadline))] if verbose >= 1 else None))


def _tuner(plan: StudyPlan, phase: str, trainable, space: dict, **tune_config) -> Tuner:
    """build_tuner for one phase of the plan: named ``<study>-<phase>``, with the options' retries."""
    return build_tuner(trainable, space, name=f"{plan.study}-{phase}", ws=plan.ws,
                       max_failures=plan.options.max_failures, verbose=plan.options.verbose,
                       label=f"{plan.study} · {phase}", deadline=(plan.study, phase), **tune_config)


def _open_parent(plan: StudyPlan, phase: str) -> str:
    """The phase's parent MLflow run (reopened on a resume), which its trials' runs nest under."""
    return open_parent(plan.uri, plan.experiment_id, study=plan.study, phase=phase, head=plan.head,
                       pins=plan.pins.as_dict() if plan.pins else None)


def _restore_or_new(plan: StudyPlan, phase: str, trainable, make_new: Callable[[], Tuner]) -> Tuner:
    """The phase's Tuner: restored from its saved state (only with --resume), else ``make_new()``."""
    from ray.tune import Tuner  # heavy (ray), as trial_trainable
    path = plan.exp_path(phase)
    restoring = Tuner.can_restore(path)
    if restoring and not plan.options.resume:
        raise DataError(f"study {plan.study!r} already has a {phase} phase in {path}; pass --resume "
                        "to continue it, or --study NEW_NAME to start another")
    # this run's deadline for the phase, read by every trial it starts or resumes (a restored
    # trial's config keeps the deadline of the run that first started it)
    set_deadline(plan.ws.root, plan.study, phase, plan.options.deadline,
                 epochs=sibling_epochs(plan, phase, path) if restoring else 0)
    return _restore(plan, phase, path, trainable) if restoring else make_new()


def _restore(plan: StudyPlan, phase: str, path: str, trainable) -> Tuner:
    """A search trial that failed for good stays failed (OptunaSearch has already told Optuna
    so and would ignore any new result); a failed cv fold, which the study cannot do without,
    resumes from its last checkpoint. Unfinished trials continue from their checkpoints and
    finished ones are not rerun. After an MLflow outage (orchestrator/study/tracking_outage.py) the
    failed trials continue too, to finish logging."""
    from ray.tune import Tuner  # heavy (ray), as trial_trainable
    # runs a killed driver left RUNNING are closed first; a resumed trial reopens its own
    _close_runs(plan, phase, saved_statuses(path))
    return Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                         resume_errored=phase == "cv" or outage_recorded(path), restart_errored=False)


def sibling_epochs(plan: StudyPlan, phase: str, path: str) -> int:
    """Epochs a resumed trial trains when the phase trained to a deadline before and this resume
    gives none (`tune --phase cv --resume` after a failed fold of a `run --budget` study): as many
    as its finished sibling trials trained, not its config's cap; 0 otherwise (its config's)."""
    if plan.options.deadline or not current_deadline(plan.ws.root, plan.study, phase):
        return 0
    done = [t.last_result.get("epoch") for t in saved_trials(path) if t.status == "TERMINATED"]
    epochs = max((int(e) for e in done if e), default=0)
    if epochs:
        log.info("%s (%s): no deadline given, so resumed trials train %d epochs, as the phase's finished trials "
                 "did under their deadline", plan.study, phase, epochs)
    else:
        log.warning("%s (%s): no deadline given and no finished trial to match: resumed trials train their "
                    "configured %d epochs (the cap of a run --budget study); pass the same run command instead",
                    plan.study, phase, plan.base.epochs)
    return epochs


# --- the search phase -------------------------------------------------------------------------


def run_search(plan: StudyPlan, resources: dict, max_concurrent: int) -> pd.DataFrame:
    """The search phase, new or resumed; its best trials, and Optuna's plots on its parent run."""
    parent = _open_parent(plan, "search")
    ctx = plan.context("search", parent)
    trainable = trial_trainable(resources)
    tuner = _restore_or_new(plan, "search", trainable, lambda: _new_search_tuner(plan, trainable, ctx, max_concurrent))
    table = _fit(plan, "search", tuner, parent, plan.options.samples)
    report_search(plan, parent)
    return table


def searched_space(head: str, backbones: tuple[str, ...]) -> tuple[object, dict]:
    """The head's search space and the recipe's point, which Optuna evaluates first."""
    space, point = search_space(head), recipe_point(head)
    if backbones:   # the backbone is a dimension too; the recipe's point tries the first one
        return with_backbones(space, backbones), point | {"backbone": backbones[0]}
    return space, point


def _new_search_tuner(plan: StudyPlan, trainable, ctx: RunContext, max_concurrent: int) -> Tuner:
    """OptunaSearch (seeded, the recipe first) with ASHA on val F1; no trial starts that could not
    finish an epoch before the deadline (StartBeforeDeadline). The searched keys leave the fixed config."""
    from ray.tune.schedulers import ASHAScheduler  # heavy (ray), as trial_trainable
    from ray.tune.search.optuna import OptunaSearch  # heavy (ray, optuna), as above

    from orchestrator.study.search_start import StartBeforeDeadline  # heavy (ray), as above
    names = plan.options.search_backbones
    space, point = searched_space(plan.head, names)
    searcher = OptunaSearch(space, metric=METRIC, mode=MODE, seed=plan.options.seed, points_to_evaluate=[point])
    epochs = plan.base.epochs
    asha = ASHAScheduler(metric=METRIC, mode=MODE, max_t=epochs, reduction_factor=3,
                         grace_period=min(plan.options.grace_period, epochs))
    searched = SEARCHED + (BACKBONE_FIELDS if names else ())
    fixed = {k: v for k, v in plan.base.to_dict().items() if k not in searched} | {"run": ctx.to_dict()}
    return _tuner(plan, "search", trainable, fixed,
                  search_alg=StartBeforeDeadline(searcher, max_concurrent, (str(plan.ws.root), plan.study, "search")),
                  scheduler=asha, num_samples=plan.options.samples, time_budget_s=plan.options.time_budget_s)


def report_search(plan: StudyPlan, parent: str) -> None:
    """Optuna's plots of the finished search on its parent run, and which parameter mattered most."""
    import pickle

    from mlflow.exceptions import MlflowException

    from results.search_plots import ARTIFACT_DIR, log_search_plots  # heavy (optuna, mlflow): after a search
    try:
        summary = log_search_plots(plan.uri, parent, plan.exp_path("search"))
    # the search is finished and recorded: a plot must not stop the cv phase. Named: a damaged
    # searcher state, what Optuna's and matplotlib's plots raise on odd trials, an MLflow outage
    except (pickle.UnpicklingError, EOFError, ValueError, RuntimeError, OSError, MlflowException) as exc:
        log.warning("%s: Optuna's plots of the search could not be made (%s: %s)", plan.study, type(exc).__name__, exc)
        return
    log.info("%s %s (plots: MLflow run %s, %s/)", plan.study, summary.line(), parent, ARTIFACT_DIR)


# --- the cv phase -----------------------------------------------------------------------------


def run_cv(plan: StudyPlan, resources: dict, max_concurrent: int) -> pd.DataFrame:
    """The cv phase, new or resumed: cv_config trained on each fold; every fold's row."""
    best = cv_config(plan)
    folds = list(range(plan.options.k)) if plan.options.fold == "all" else [int(plan.options.fold)]
    parent = _open_parent(plan, "cv")
    trainable = trial_trainable(resources)

    def new():
        from ray import tune  # heavy, as trial_trainable
        space = best.to_dict() | {"fold": tune.grid_search(folds), "run": plan.context("cv", parent).to_dict()}
        return _tuner(plan, "cv", trainable, space, max_concurrent_trials=max_concurrent)
    return _fit(plan, "cv", _restore_or_new(plan, "cv", trainable, new), parent, len(folds))


def cv_config(plan: StudyPlan) -> TrialConfig:
    """What the cv folds train: the search's best config, or the recipe's without a search."""
    o = plan.options
    if o.samples == 0:
        best = plan.base
    else:
        best = best_search_config(plan.uri, plan.head, plan.study, o.experiment)
    epochs = {k: o.trial[k] for k in ("epochs",) if k in o.trial}   # a budget may give cv more than a search trial
    return replace(best, search_folds=1, val_from=o.trial.get("val_from", 1), **epochs)


def best_search_config(uri: str, head: str, study: str, experiment: str = EXPERIMENT) -> TrialConfig:
    """The config of the study's search trial with the highest best_val_f1 (from MLflow)."""
    runs = find_runs(uri, head=head, study=study, phase="search", experiment=experiment)
    if runs.empty or "metrics.best_val_f1" not in runs or runs["metrics.best_val_f1"].isna().all():
        raise DataError(f"no search trial with a validation F1 for head {head!r}, study {study!r} in {uri}; "
                        f"run `python -m orchestrator tune --head {head} --phase search` first")
    best = runs.sort_values(["metrics.best_val_f1", "start_time"], ascending=[False, True]).iloc[0]
    return TrialConfig.from_dict(run_config(best))


# --- fitting a phase: trials that failed, interruptions, MLflow runs closed -------------------


def _fit(plan: StudyPlan, phase: str, tuner: Tuner, parent: str, expected: int) -> pd.DataFrame:
    """Fit the phase's trials and close their MLflow runs; an interrupted fit (Ctrl-C: Tune saves
    its state and returns) raises StudyInterrupted, a cv fold that failed for good StudyFailed."""
    started = time.time()
    grid = tuner.fit()
    check_after_fit(plan.uri, plan.exp_path(phase), grid, resume_command(plan, phase))
    failed = failed_for_good(grid)
    statuses = final_statuses(plan.exp_path(phase), failed)
    _close_runs(plan, phase, statuses)
    _stop_if_interrupted(plan, phase, parent, statuses, expected, _out_of_time(plan, phase, started))
    if failed and phase == "cv":   # every fold votes and gives OOF rows: none may be missing
        _stop_for_failed_folds(plan, parent, failed)
    if failed and len(failed) == len(statuses):   # no finished trial: no config for cv to train
        _stop_for_no_finished_search(plan, phase, parent, failed)
    if failed:   # a search goes on without them: Optuna was told, the best finished trial wins
        log.warning("%s", failure_text(failed, f"study {plan.study!r} ({phase})"))
    close_parent(plan.uri, parent)
    return best_trials(plan.uri, plan.head, plan.study, phase, plan.options.experiment)


def resume_command(plan: StudyPlan, phase: str) -> str:
    """The command that continues the phase from Tune's saved state, with everything the study
    was started with: its data, workspace and MLflow store (else a resume finds no saved state, or
    no search to go on from), its settings (else the recipe's model is built, which its pins
    refuse) and its cluster options. Trial settings without a flag (run's validated epochs) are
    sized anew."""
    o = replace(plan.options, study=plan.study, resume=True, phase=plan.options.phase if plan.options.phase == "both"
                else phase)
    where = ["--data", str(plan.data), "--workspace", str(plan.ws.root), "--tracking-uri", plan.uri]
    where += ["--storage", plan.ws.storage] if plan.ws.storage else []
    return shlex.join(["python", "-m", "orchestrator", "tune", "--head", plan.head, *where,
                       *flag_words({k: getattr(o, k) for k in TUNE_FLAGS}, TuneOptions),
                       *flag_words({k: v for k, v in o.trial.items() if k in TRIAL_FLAGS}, dict.fromkeys(TRIAL_FLAGS))])


def failed_for_good(results: Iterable[Result]) -> list[Result]:
    """The fit's results (ray.tune.Result) of the trials that failed with their retries spent."""
    return [r for r in results if r.error is not None]


def final_statuses(exp_path: str, failed: list[Result]) -> dict[str, str]:
    """Trial id -> status after a fit. Tune saves a trial that failed for good as it last saw
    it running: the fit's results know it failed."""
    return saved_statuses(exp_path) | {result_trial_id(r): "ERROR" for r in failed}


def _out_of_time(plan: StudyPlan, phase: str, started: float) -> bool:
    """A search under a deadline starts no trial that could not finish an epoch before it
    (orchestrator/study/search_start.py): fewer trials than asked is then its plan, not an interruption."""
    budget = plan.options.time_budget_s
    return phase == "search" and (bool(plan.options.deadline)
                                  or budget is not None and time.time() - started >= budget)


def _stop_if_interrupted(plan: StudyPlan, phase: str, parent: str, statuses: dict[str, str], expected: int,
                         out_of_time: bool) -> None:
    """StudyInterrupted when a trial is unfinished or fewer ran than ``expected`` (and time
    did not end the search); the parent run is KILLED, which a --resume reopens."""
    unfinished = sum(s not in ("TERMINATED", "ERROR") for s in statuses.values())
    if not unfinished and (len(statuses) >= expected or out_of_time):
        return
    close_parent(plan.uri, parent, "KILLED")
    run_note = " (a `run` study: the same run command again, which gives it the run's deadline)" \
        if plan.options.deadline else ""
    raise StudyInterrupted(f"study {plan.study!r} ({phase}) stopped after {len(statuses) - unfinished} of "
                           f"{expected} trials; continue it with `{resume_command(plan, phase)}`{run_note}",
                           [t for t, s in statuses.items() if s == "TERMINATED"])


def _stop_for_failed_folds(plan: StudyPlan, parent: str, failed: list[Result]) -> None:
    """StudyFailed naming the failed folds and how to resume them; the parent run is FAILED."""
    close_parent(plan.uri, parent, "FAILED")
    check_failed(failed, f"study {plan.study!r} (cv)", f"`{resume_command(plan, 'cv')}` (a failed fold resumes "
                 "from its last checkpoint and trains as many epochs as the finished folds did; `run`: the same "
                 "run command again, which also gives it the run's deadline)")


def _stop_for_no_finished_search(plan: StudyPlan, phase: str, parent: str, failed: list[Result]) -> None:
    """Every trial failed: nothing to go on with, and --resume never reruns a failed search trial
    (Optuna recorded it), so the fix is a new study name."""
    close_parent(plan.uri, parent, "FAILED")
    raise StudyFailed(f"{failure_text(failed, f'study {plan.study!r} ({phase})')}. No search trial finished, "
                      "so there is no config to go on with: fix the cause, then search again under a new "
                      "name with --study NEW_NAME (`run`: --study NEW_PREFIX); a --resume would not rerun them")


def failure_text(failed: list[Result], what: str) -> str:
    """Which trials failed for good (Tune results with an error): fold, MLflow run, error, log."""
    def one(r) -> str:
        fold = r.config.get("fold", "?")
        run_id = r.metrics.get("mlflow_run_id") or "none: it failed before its first epoch"
        error = str(r.error).strip().splitlines()[-1] if str(r.error).strip() else type(r.error).__name__
        return f"fold {'all' if fold == -1 else fold} (MLflow run {run_id}; log in {r.path}): {error}"
    return f"{what}: {len(failed)} trial(s) failed for good, their retries spent: " + "; ".join(map(one, failed))


def check_failed(results: Iterable[Result], what: str, resume: str) -> None:
    """Trials that failed for good stop the study (StudyFailed) rather than leave it with part
    of its folds; the trials that finished are kept for the ``resume`` command."""
    failed = failed_for_good(results)
    if failed:
        raise StudyFailed(f"{failure_text(failed, what)}. The other trials are kept: fix the cause, then "
                          f"continue with {resume}")


def _close_runs(plan: StudyPlan, phase: str, statuses: dict[str, str]) -> None:
    """MLflow runs left RUNNING (trials ASHA stopped, or an interrupted study) get
    FINISHED / FAILED / KILLED from the trial's saved Tune status."""
    from mlflow.tracking import MlflowClient
    runs = find_runs(plan.uri, head=plan.head, study=plan.study, phase=phase, experiment=plan.options.experiment)
    client = MlflowClient(plan.uri)
    mlflow_status = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}
    for _, r in runs.iterrows():
        status = mlflow_status.get(statuses.get(r.get("tags.trial_id", ""), ""), "KILLED")
        if r["status"] != status:
            client.set_terminated(r["run_id"], status)


# --- Tune's saved state, read through its API -------------------------------------------------


def result_trial_id(result: Result) -> str:
    """The Tune trial id of one of a fit's results (a ray.tune.Result). Tune puts it in every
    result's metrics, also for a trial that failed before its first report: Result.metrics is
    the trial's ``last_result``, which Tune fills with at least the trial id."""
    return result.metrics["trial_id"]


def saved_statuses(exp_path: Path | str) -> dict[str, str]:
    """Trial id -> status as Tune *saved* it. After Ctrl-C the in-memory statuses call the
    stopped trials TERMINATED, but a restore resumes what the saved state says."""
    return {t.trial_id: t.status for t in saved_trials(exp_path)}


def saved_trials(exp_path: Path | str) -> list:
    """The experiment's trials as Tune saved them (status, last result)."""
    from ray.tune import ExperimentAnalysis
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)   # it warns about result files it does not need here
    try:
        return list(ExperimentAnalysis(str(exp_path)).trials)
    finally:
        quiet.setLevel(level)


# --- the results table ------------------------------------------------------------------------


BEST_COLUMNS = ["head", "phase", "fold", "trial_id", "best_val_f1", "best_epoch", "lr", "loss",
                "strength", "old_from", "run_id"]


def best_trials(uri: str, head: str, study: str, phase: str, experiment: str = EXPERIMENT,
                top: int = 5) -> pd.DataFrame:
    """search: the ``top`` trials by best val F1; cv: every fold."""
    runs = find_runs(uri, head=head, study=study, phase=phase, experiment=experiment)
    if runs.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    cfgs = [run_config(r) for _, r in runs.iterrows()]
    table = pd.DataFrame({
        "head": head, "phase": phase, "fold": runs["tags.fold"], "trial_id": runs["tags.trial_id"],
        "best_val_f1": runs.get("metrics.best_val_f1"), "best_epoch": runs.get("metrics.best_epoch"),
        "lr": [f"{c['lr']:.2g}" for c in cfgs], "loss": [c["loss"] for c in cfgs],
        "strength": [round(c["strength"], 3) for c in cfgs], "old_from": [c["old_from"] for c in cfgs],
        "run_id": runs["run_id"]})
    table = table.sort_values("best_val_f1", ascending=False, na_position="last")
    return (table.head(top) if phase == "search" else table.sort_values("fold")).reset_index(drop=True)
