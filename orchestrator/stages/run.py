"""`run`: every stage in order on one data set (the README's main command).

Without a budget it uses small fixed settings that finish the demo data on a laptop CPU.
With ``--budget`` the orchestrator sizes the work itself (orchestrator/chain/budget.py): it
measures preprocessing, reserves the ensemble's share, measures how fast this machine
trains the chosen model, and gives each head's phases epochs and deadlines that fit.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.demo_data import write_demo_data
from core.errors import DataError
from core.folds import FoldSpec, check_fold_units
from core.label_table import labels_hash, load_labels
from core.workspace import Workspace
from orchestrator.chain.budget import (
    Clock,
    HeadPlan,
    Laps,
    Sizing,
    Trials,
    budget_use_line,
    ensemble_reserve_s,
    fixed_plan,
    plan_target,
    target_weights,
    trial_slots,
)
from orchestrator.chain.ledger import run_ledger
from orchestrator.chain.studies import (check_model_settings, resumed_age_head, study_prefix, trained_settings,
                                        voting_studies)
from orchestrator.infra.ray_session import cluster_capacity, ray_session, trial_resources
from orchestrator.options import RUN_AGE_HEAD, AuditOptions, EnsembleOptions, RunOptions, TuneOptions
from results.tracking import check_tracking
from search_spaces import recipe_config
from trainables.config import FORWARD_COST, PREDICTED_VIEWS
from trainables.ordinal_head import check_ordinal_model
from trainables.pretrained import is_none

from .audit import audit
from .eda import write_eda
from .ensemble import ensemble
from .preprocess import preprocess
from .retrain import retrain_head
from .tune import check_weights, tune_head

log = logging.getLogger(__name__)


def ensure_data(data: Path) -> Path:
    """Make the demo data in ``data`` when it holds no data set yet (and say so)."""
    if not (Path(data) / "train" / "train.csv").exists():
        log.info("no data set in %s: writing the built-in demo data there", data)
        write_demo_data(data)
    return Path(data)


def run_all(data: Path, ws: Workspace, options: RunOptions = RunOptions()) -> dict:
    uri = ws.tracking_uri(options.tracking_uri)
    check_tracking(uri)   # the study's name is read from MLflow next: a store that is down is the user's to fix
    data = ensure_data(data)
    ws.make()
    train = load_labels(data, ws)   # train.csv + the workspace's corrections, as every stage reads it
    # refused before the ledger: a refusal found after preprocessing was charged to the next run
    check_fold_units(train, FoldSpec(options.folds))
    labels = labels_hash(train)
    # before anything trains: the study these labels train (orchestrator/chain/studies.py) ...
    o = replace(options, study=study_prefix(uri, options.study, options.targets, labels))
    trained = trained_settings(uri, o.study, o.targets)   # the models its studies hold already
    if o.age_head is None:   # a rerun resumes its studies with the age head they trained with
        o = replace(o, age_head=resumed_age_head(trained))
        if o.age_head not in (None, RUN_AGE_HEAD):
            log.warning("the studies of %s trained with the %s age head: resuming them so (run's default is now %s: "
                        "--age-head %s --study NEW trains that)", o.study, o.age_head, RUN_AGE_HEAD, RUN_AGE_HEAD)
    # ... and every head's voters
    studies = voting_studies(uri, o.study, o.targets, labels, full=o.eval_vote == "full")
    # ... and that no study it resumes holds models of another backbone (a changed --head-backbone)
    check_model_settings(o.study, trained, {t: trial_settings(o, t) for t in o.targets})
    check_ordinal_models(o)
    # a rerun after a kill counts the killed run's seconds against the budget
    with run_ledger(ws, o.study, o.budget_s, uri, [f"{o.study}-{t}" for t in o.targets]) as clock:
        return _run_stages(data, ws, o, clock, train, studies) | {"study": o.study}


def _run_stages(data: Path, ws: Workspace, o: RunOptions, clock: Clock, train, studies: dict) -> dict:
    write_eda(train, ws.results / "eda")
    check_start_weights(o)
    plans = {}
    with ray_session(o.address, o.num_cpus):
        o = o.on_cluster()
        crops = preprocess(data, ws, progress=False, num_gpus_per_worker=None)
        log.info(crops.attrs["summary"].line())
        sizer = Sizer.measure(o, int((crops["split"] == "train").sum()), int((crops["split"] == "eval").sum()))
        for i, target in enumerate(o.targets):
            # planned when the target starts, from the time really left: an earlier head's
            # overrun is taken from the later ones, never from the ensemble's reserve
            plans[target] = sizer.plan(target, o.targets[i:], clock)
            train_head_models(data, ws, target, o, plans[target])
        laps = Laps()
        result = ensemble(data, ws, ensemble_options(o, studies))
        laps.lap("ensemble")
    laps.lap("ray_stop")
    audit = run_audit(data, ws, o, studies)
    laps.lap("audit")
    audited = {} if audit is not None else {"audit": None}   # skipped (its warning says why): no cost to fit
    write_budget_use(ws, o, sizer, clock, laps.seconds | audited | {"ensemble_steps": result.seconds})
    return {"plans": plans, "ensemble": result, "audit": audit, "seconds": clock.elapsed()}


def write_budget_use(ws: Workspace, o: RunOptions, sizer: "Sizer", clock: Clock, seconds: dict) -> None:
    """WS/results/budget.json: what the ensemble and the audit were reserved and what they took
    (the reserve's model is fitted from these: benchmarks/README.md, "The budget's reserve")."""
    if o.budget_s is None or not sizer.one_images_per_s:   # no budget, or --smoke-test's fixed settings: no reserve
        (ws.results / "budget.json").unlink(missing_ok=True)   # an earlier run's account is not this one's
        return
    used = {"budget_s": o.budget_s, "seconds": round(clock.elapsed(), 1), "reserve_s": round(sizer.reserve_s, 1),
            "models": sizer.voters, "n_eval": sizer.n_eval, "slots": sizer.parallel,
            "images_per_s": round(sizer.one_images_per_s, 2), "forward_cost": round(sizer.forward_cost, 4), **seconds}
    (ws.results / "budget.json").write_text(json.dumps(used, indent=1) + "\n")
    log.info(budget_use_line(used))


def check_start_weights(o: RunOptions) -> None:
    """Say where each target's model starts from; pretrained weights are checked before Ray starts."""
    if o.smoke_test:
        return
    checked = set()
    for t in o.targets:
        bb = o.backbone_of(t)
        if is_none(bb.pretrained):
            log.info("%s: %s at %d px from scratch (--pretrained none: nothing to load)", t, bb.model, bb.img_size)
        elif (bb.model, bb.pretrained) not in checked:   # per-head targets often share one: load it once
            check_weights(recipe_config(t, **asdict(bb)))
            checked.add((bb.model, bb.pretrained))


@dataclass(frozen=True)
class Sizer:
    """Turns the time left into a target's plan, at this machine's measured training speed."""
    options: RunOptions
    n_train: int
    parallel: int = 1             # trials that run side by side
    one_images_per_s: float = 0.0  # one trial's training speed (0 = no budget: fixed settings)
    reserve_s: float = 0.0        # kept for the ensemble
    probes: tuple[dict, ...] = ()  # what each trial slot's speed probe read (trainables/speed.py)
    speeds: dict | None = None     # target -> one trial's training speed on its backbone
    n_eval: int = 0                # eval images the ensemble predicts
    voters: int = 0                # models that predict them
    forward_cost: float = FORWARD_COST   # predicting an image's view as a share of a training step (measured under a budget)

    @property
    def seeds(self) -> int:
        return self.options.full_seeds or self.parallel

    @classmethod
    def measure(cls, o: RunOptions, n_train: int, n_eval: int) -> "Sizer":
        o = o.on_cluster()
        res = trial_resources(o.gpus_per_trial, o.cpus_per_trial)   # what a trial will hold
        parallel = trial_slots(cluster_capacity(), res["cpu"], res["gpu"])   # what it can grow to
        if o.budget_s is None or o.smoke_test:
            return cls(o, n_train, parallel)
        from trainables.speed import probe_trial_slots  # heavy (torch, timm): only under a budget
        # every trial slot measures at once, with a trial's threads (Ray gives a trial OMP threads
        # = its CPUs; two OpenMP threads on a busy 2-core box run 10x slower than one) and GPUs;
        # the slowest slot sets the pace of each wave
        # one probe per backbone: targets on different backbones train at different speeds
        arch = {t: replace(o.backbone_of(t), pretrained="none") for t in o.targets}   # speed, not weights
        probed = {}
        for t, bb in arch.items():
            if bb not in probed:
                cfg = recipe_config(t, **trial_settings(o, t), precision=o.precision)   # frozen layers too
                probed[bb] = probe_trial_slots(cfg, parallel, res["cpu"], res["gpu"])
        speeds = {t: min(p["images_per_s"] for p in probed[bb]) for t, bb in arch.items()}
        probes = [p for ps in probed.values() for p in ps]
        one = min(speeds.values())
        # the probe predicted with 2 TTA views, as the ensemble does: per view, against a step
        forward_cost = one / (PREDICTED_VIEWS * min(p["predict_images_per_s"] for p in probes))
        sizer = cls(o, n_train, parallel, one, speeds=speeds, forward_cost=forward_cost)
        models = len(o.targets) * (sizer.seeds if o.eval_vote == "full" else o.folds + sizer.seeds)
        reserve = ensemble_reserve_s(models, n_eval, parallel, one, forward_cost)
        reads = ", ".join(f"{p['images_per_s']:.0f}" for p in probes)
        log.info(f"budget: {one:.0f} training images/s per trial on {probes[0]['device']} (slots read {reads}), "
              f"{parallel} trial(s) at once; {reserve:.0f} s reserved for the ensemble")
        return replace(sizer, reserve_s=reserve, probes=tuple(probes), n_eval=n_eval, voters=models)

    def trials(self) -> Trials:
        """The options' trials per phase on this cluster (one search trial is no search)."""
        o = self.options
        return Trials(o.num_samples if o.num_samples > 1 else 0, o.folds, self.seeds, self.parallel)

    def plan(self, target: str, left: tuple[str, ...], clock: Clock) -> HeadPlan:
        """``target``'s plan from the time ``clock`` has left, the targets ``left`` still to train."""
        o = self.options
        if not self.one_images_per_s:
            return fixed_plan(self.trials(), o.epochs)
        speed = (self.speeds or {}).get(target, self.one_images_per_s)
        sizing = Sizing(self.trials(), self.n_train, speed, o.max_epochs, self.reserve_s, self.forward_cost)
        return plan_target(sizing, target, left, clock.left(), first=left == o.targets,
                           weights=target_weights(o.targets))


def cluster_options(o: RunOptions) -> dict:
    """Where and with what a run's trials train, as tune_head and retrain_head take them."""
    return dict(gpus_per_trial=o.gpus_per_trial, cpus_per_trial=o.cpus_per_trial, address=o.address,
                num_cpus=o.num_cpus)


def check_ordinal_models(o: RunOptions) -> None:
    """A --model whose classifier the ordinal age head cannot replace is refused here, before the
    run is charged, not by every trial of the target."""
    for t in o.targets:
        if o.age_head_of(t) == "ordinal" and not o.smoke_test:
            try:
                check_ordinal_model(o.backbone_of(t).model)
            except ValueError as exc:
                raise DataError(f"{o.study}-{t}: {exc}") from exc


def trial_settings(o: RunOptions, target: str) -> dict:
    """What ``target``'s trials train with beside the recipe's config: its backbone (model, input
    side, weights), batch size, age head and frozen layers (--smoke-test: the smoke config's own)."""
    if o.smoke_test:
        return dict(age_head=o.age_head_of(target))
    return asdict(o.backbone_of(target)) | dict(batch_size=o.batch_size, age_head=o.age_head_of(target),
                                                freeze=o.freeze)


def train_head_models(data: Path, ws: Workspace, target: str, o: RunOptions, plan: HeadPlan) -> None:
    """search + cv (tune) and the full-data retrain of one target (a head, or all in one model)."""
    opts = TuneOptions(num_samples=plan.num_samples, folds=o.folds, smoke_test=o.smoke_test, backbone=o.backbone,
                       seed=o.seed, study=f"{o.study}-{target}", tracking_uri=o.tracking_uri, **cluster_options(o),
                       resume=True, verbose=1,   # a status table every ~30 s
                       trial=dict(precision=o.precision, val_from=plan.val_from, **trial_settings(o, target)))
    if plan.num_samples:
        # search trials stop themselves at the search deadline, after at least one epoch, so the
        # cv phase always has a best config; no Tune time budget, which could kill the first trial
        # before it reports (a busy machine) and leave cv nothing to train
        tune_head(data, ws, target, replace(opts.with_trial(epochs=None if o.smoke_test else plan.search_epochs),
                                            phase="search", deadline=plan.search_end))
    # under a budget a phase whose trials run in one wave trains until its deadline, the learning
    # rate annealed to it (trainables/schedule.py): the plan's epochs are its estimate, max_epochs
    # the cap; in waves each trial keeps its planned epochs (and still stops at the deadline)
    cv_epochs = o.max_epochs if plan.cv_to_deadline else plan.epochs
    best = tune_head(data, ws, target, replace(opts.with_trial(epochs=None if o.smoke_test else cv_epochs),
                                               phase="cv", deadline=plan.cv_end))
    log.info(f"{target}: cv folds best val F1 " + ", ".join(
        f"{f:.3f}" for f in best.loc[best["phase"] == "cv", "best_val_f1"].astype(float)))
    retrain_head(data, ws, target, study=f"{o.study}-{target}", tracking_uri=o.tracking_uri, **cluster_options(o),
                 verbose=1, deadline=plan.full_end,
                 epochs=o.max_epochs if plan.full_to_deadline and not o.smoke_test else plan.full_epochs,
                 seeds=plan.full_seeds, resume=True)   # a rerun reuses finished full-data models


def ensemble_options(o: RunOptions, studies: dict[str, str]):
    """The ensemble of exactly ``studies`` (orchestrator/chain/studies.py: never another, newer one)."""
    # under a budget the models predict as Ray tasks side by side (the reserve assumes so)
    return EnsembleOptions(tracking_uri=o.tracking_uri, calibrate=o.calibrate, eval_vote=o.eval_vote,
                           study=studies, use_ray=o.budget_s is not None and not o.smoke_test,
                           gpus_per_model=o.gpus_per_trial, cpus_per_model=o.cpus_per_trial)


def run_audit(data: Path, ws: Workspace, o: RunOptions, studies: dict[str, str]):
    """The label audit of the voting studies: a report, never applied. Its failure (say,
    a fold with no out-of-fold rows) is a warning: the submission is already written."""
    try:
        res = audit(data, ws, AuditOptions(study=studies, tracking_uri=o.tracking_uri))
    except DataError as exc:
        log.warning("label audit skipped: %s", exc)
        return None
    return res
