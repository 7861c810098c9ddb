"""A wall-clock budget for `run --budget 23m`, shared out over the stages.

The orchestrator, not the user, sizes the work: preprocessing runs first and is measured,
the ensemble's share is reserved, and what is left is split over the heads and their
phases. Each trial also gets a deadline, so a slow machine stops training early instead
of overrunning.

Only arithmetic lives here, on plain numbers: orchestrator/stages/run.py measures the cluster
and the training speed and hands them over.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field

from core.labels import ALL
from trainables.config import FORWARD_COST, PREDICTED_VIEWS

log = logging.getLogger(__name__)

_UNITS = {"h": 3600, "m": 60, "s": 1}


class BudgetTooSmall(ValueError):
    """--budget leaves no time to train once start-up and the ensemble are set aside: a usage
    error, raised before any trial starts (so the run ledger charges nothing for it)."""


def parse_duration(text: str | float | int) -> float:
    """'23m', '1h30m', '90s', '90' (seconds) -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or re.sub(r"\s", "", "".join(a + u for a, u in parts)) != re.sub(r"\s", "", s):
        raise ValueError(f"budget {text!r}: write it like 23m, 1h30m, 90s or a number of seconds")
    return sum(float(a) * _UNITS[u] for a, u in parts)


@dataclass
class Clock:
    """Seconds used and left of an optional budget (None = unlimited)."""
    total_s: float | None = None
    started: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return time.time() - self.started

    def left(self) -> float:
        return float("inf") if self.total_s is None else self.total_s - self.elapsed()


class Laps:
    """Seconds per named step, in order: what the ensemble's and the audit's reserve is fitted
    from (each `run --budget` writes them to WS/results/budget.json)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self._last, 2)
        self._last = now

    def line(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())


def budget_use_line(use: dict) -> str:
    """WS/results/budget.json's account in words, as `run` logs it and benchmarks/quality.py prints it."""
    steps = ", ".join(f"{k} {v:.0f}" for k, v in use.get("ensemble_steps", {}).items())
    audit = "skipped" if use["audit"] is None else f"{use['audit']:.0f} s"
    return (f"budget: ensemble {use['ensemble']:.0f} s ({steps}) and audit {audit} of the {use['reserve_s']:.0f} s "
            f"reserved; run used {use['seconds']:.0f} of {use['budget_s']:.0f} s")


@dataclass(frozen=True)
class HeadShare:
    search_s: float
    cv_s: float
    full_s: float

    @property
    def total_s(self) -> float:
        return self.search_s + self.cv_s + self.full_s


# What the sizing assumes: each number, what it covers and where it comes from
# (benchmarks/README.md, "run --budget").
TRIAL_OVERHEAD_S = 6.0   # a wave of trials' start-up and wrap-up: Ray starting the actors (importing
                         # torch and timm), MLflow's run, artifacts and checkpoints; measured ~3.1 s a
                         # trial on the 2-core box at load 12-16 ("per-trial overhead"), and twice that
                         # leaves room for a more loaded machine, where start-up runs longer
# the ensemble's and the audit's reserve, fitted to what three 23-minute runs took, step by step
# (WS/results/budget.json; benchmarks/README.md, "The budget's reserve": 7,000 eval images, 2 models)
ENSEMBLE_FIXED_S = 10.0  # its steps that no prediction scales (choosing the models, the OOF downloads, the
                         # calibration, the report, the MLflow record): measured 7.3 to 9.6 s
PREDICT_START_S = 10.0   # the prediction tasks' start: a Ray worker importing torch and timm, the model's download
PREDICT_READ = 1.7       # the prediction measured over the probe's estimate, its start taken off: 1.40, 1.38
                         # and 1.64 (the probe's batches sit in memory; the ensemble reads and decodes every
                         # crop); 1.7 covers that spread
RESERVE_MARGIN = 1.1     # on the whole: the ensemble has no deadline, so a step slower than fitted (a
                         # machine whose speed drifts) is taken from the budget; a judgment, not a fit
AUDIT_FIXED_S = 5.0      # the label audit after it (the OOF downloads again, the contact sheet, its
                         # MLflow run): measured 3.5 to 4.0 s
MIN_HEAD_S = 10.0        # less training than this per target is not worth starting: it is less than
                         # two trials' start-up (a judgment, not a measurement)
VALIDATED_EPOCHS = 3     # cv trials validate (with TTA) only their last 3 epochs under a budget: the
                         # learning rate anneals to the deadline, so the best epoch is one of the last,
                         # and with 2 folds validating an epoch costs as much as training it
SPEED_MARGIN = 0.95      # plan at 95% of the measured speed: the speed drifts (up to 2x within minutes
                         # on the 2-core box) and a loaded machine slows trials down; a 23-minute run
                         # planned at the full speed had its folds stopped after 11 and 10 of 12 epochs


# the age head is the hard one (rare >=60 class, from-scratch features): it gets the most
HEAD_WEIGHTS = {"mask": 0.25, "gender": 0.25, "age": 0.5, "all": 1.0}
PHASE_SHARES = (0.3, 0.5, 0.2)   # search, cv, full-data retrain
NO_SEARCH_SHARES = (0.0, 1.0, 0.0)   # no search: cv and the retrain share it all, split by their cost


def target_weights(targets: tuple[str, ...]) -> dict[str, float]:
    """How training time splits over a run's ``targets`` (all of them, not those left: the split
    must not change once the joint model is done): a per-head run's heads by HEAD_WEIGHTS (age
    gets half); beside the joint model, a head's own model (`run --head-backbone`) is a model of
    its own, with its own folds and full-data models, so it gets as much time as the joint one."""
    if ALL in targets:
        return {t: HEAD_WEIGHTS[ALL] for t in targets}
    return HEAD_WEIGHTS


def share_out(seconds: float, heads: tuple[str, ...], weights: dict[str, float] = HEAD_WEIGHTS,
              phases: tuple[float, float, float] = PHASE_SHARES) -> dict[str, HeadShare]:
    """Split ``seconds`` of training over heads (by weight) and their phases."""
    total_w = sum(weights[h] for h in heads)
    out = {}
    for h in heads:
        s = seconds * weights[h] / total_w
        out[h] = HeadShare(*(s * p for p in phases))
    return out


@dataclass(frozen=True)
class HeadPlan:
    """What one target's study gets: trials, epochs and, under a budget, deadlines."""
    num_samples: int              # search trials; 0: no search (cv trains the recipe's config)
    search_epochs: int            # per search trial
    epochs: int                   # per cv trial
    full_epochs: int | None       # cap for the full-data retrain (None: the folds' median)
    full_seeds: int = 1           # full-data models trained side by side
    val_from: int = 1             # first validated epoch of a cv trial
    search_end: float = 0.0       # unix deadlines (0 = none)
    cv_end: float = 0.0
    full_end: float = 0.0
    cv_to_deadline: bool = False   # the phase's trials run in one wave: each trains until the phase's
    full_to_deadline: bool = False # deadline (with waves, the first would take every wave's time)


def trial_slots(resources: dict[str, float], cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials the cluster runs side by side: its CPUs per trial's CPUs and, for GPU trials, its
    GPUs per trial's GPU share (4 GPUs at 0.5 a trial: 8), whichever is fewer."""
    slots = resources.get("CPU", 1) // max(cpus_per_trial, 1e-9)
    if gpus_per_trial > 0:
        slots = min(slots, resources.get("GPU", 0) // gpus_per_trial)
    return max(1, int(slots))


def waves(trials: int, slots: int) -> int:
    """Waves of ``trials`` on ``slots`` trial slots (3 folds on 2 slots: 2 waves)."""
    return math.ceil(trials / slots)


def ensemble_reserve_s(models: int, n_eval: int, slots: int, images_per_s: float,
                       forward_cost: float = FORWARD_COST) -> float:
    """Seconds kept for the ensemble and the audit: their fixed work, and ``models`` predicting the
    ``n_eval`` eval images in TTA views, in waves of one model per trial slot (the OOF table is already
    made); ``forward_cost`` is one view's prediction as a share of a training step (measured under a budget)."""
    predict_s = waves(models, slots) * n_eval * PREDICTED_VIEWS * forward_cost / images_per_s
    return RESERVE_MARGIN * (ENSEMBLE_FIXED_S + AUDIT_FIXED_S + PREDICT_START_S + PREDICT_READ * predict_s)


@dataclass(frozen=True)
class Trials:
    """One target's trials in each phase, on the cluster's trial slots."""
    samples: int   # search trials (0: no search)
    folds: int     # cv trials, one per fold
    seeds: int     # full-data models
    slots: int     # trials the cluster runs side by side

    @property
    def search_start_s(self) -> float:
        """The search's start-up, a wave at a time (none without a search)."""
        return waves(self.samples, self.slots) * TRIAL_OVERHEAD_S

    @property
    def cv_start_s(self) -> float:
        return waves(self.folds, self.slots) * TRIAL_OVERHEAD_S

    @property
    def full_start_s(self) -> float:
        return waves(self.seeds, self.slots) * TRIAL_OVERHEAD_S

    @property
    def start_s(self) -> float:
        """Start-up of all three phases: set aside before the training time is shared out."""
        return self.search_start_s + self.cv_start_s + self.full_start_s


@dataclass(frozen=True)
class Sizing:
    """What a target's plan is sized from, in plain numbers (measured by orchestrator/stages/run.py)."""
    trials: Trials
    n_train: int             # training images
    images_per_s: float      # one trial's measured training speed on the target's backbone
    max_epochs: int          # cap on what a budget gives one trial
    reserve_s: float = 0.0   # kept for the ensemble and the audit
    forward_cost: float = FORWARD_COST   # one view's prediction as a share of a training step (measured)


@dataclass(frozen=True)
class EpochCosts:
    """Seconds one epoch of each phase takes, its trials in waves on the trial slots."""
    cv_s: float       # training every fold
    full_s: float     # training every full-data model
    val_s: float      # validating every fold: its held-out images in TTA views
    search_s: float   # one search trial, validated every epoch (ASHA compares trials at each)


def epoch_costs(sizing: Sizing) -> EpochCosts:
    t, n = sizing.trials, sizing.n_train
    one = sizing.images_per_s * SPEED_MARGIN
    per_fold = n * (t.folds - 1) / t.folds
    held_out = n / t.folds
    return EpochCosts(cv_s=waves(t.folds, t.slots) * per_fold / one,
                      full_s=waves(t.seeds, t.slots) * n / one,
                      val_s=waves(t.folds, t.slots) * held_out * PREDICTED_VIEWS * sizing.forward_cost / one,
                      search_s=(per_fold + held_out * PREDICTED_VIEWS * sizing.forward_cost) / one)


def fitting_epochs(time_s: float, cost: EpochCosts, max_epochs: int) -> int:
    """Epochs of cv and of the full-data retrain (the same number: the retrain repeats the folds'
    best epoch) that fit ``time_s``, their last VALIDATED_EPOCHS cv epochs validated."""
    epochs = math.floor((time_s - VALIDATED_EPOCHS * cost.val_s) / (cost.cv_s + cost.full_s))
    if epochs < VALIDATED_EPOCHS:   # so few epochs that every one of them is validated
        epochs = math.floor(time_s / (cost.cv_s + cost.full_s + cost.val_s))
    return max(1, min(max_epochs, epochs))


def search_epochs(search_s: float, cost: EpochCosts, trials: Trials, epochs: int) -> int:
    """Epochs of one search trial in the search's share, in waves; at most the cv trials' ``epochs``."""
    if not trials.samples:
        return epochs
    return max(1, min(epochs, math.floor(search_s / waves(trials.samples, trials.slots) / cost.search_s)))


def budget_plan(sizing: Sizing, share: HeadShare, start: float) -> HeadPlan:
    """The plan that fits ``share``; its phases' deadlines count from ``start`` (unix seconds), each
    phase's trials first starting up (set aside before the share was made), then training."""
    t, cost = sizing.trials, epoch_costs(sizing)
    time_s = share.cv_s + share.full_s
    epochs = fitting_epochs(time_s, cost, sizing.max_epochs)
    search_end = start + t.search_start_s + share.search_s
    cv_end = search_end + t.cv_start_s + epochs * cost.cv_s + min(epochs, VALIDATED_EPOCHS) * cost.val_s
    return HeadPlan(t.samples, search_epochs(share.search_s, cost, t, epochs), epochs, epochs, t.seeds,
                    val_from=max(1, epochs - VALIDATED_EPOCHS + 1), search_end=search_end, cv_end=cv_end,
                    full_end=search_end + t.cv_start_s + t.full_start_s + time_s,
                    cv_to_deadline=waves(t.folds, t.slots) == 1, full_to_deadline=waves(t.seeds, t.slots) == 1)


def fixed_plan(trials: Trials, epochs: int) -> HeadPlan:
    """Without a budget: ``epochs`` for every trial, the full-data retrain at the folds' median."""
    return HeadPlan(trials.samples, epochs, epochs, None, trials.seeds)


def overrun_plan(now: float) -> HeadPlan:
    """Earlier targets overran (a loaded machine): this one still gets its models, one epoch per
    trial and no search, rather than failing the whole run at the end."""
    return HeadPlan(0, 1, 1, 1, full_seeds=1, search_end=now, cv_end=now, full_end=now)


def training_s(sizing: Sizing, left_s: float, targets: int) -> float:
    """What ``left_s`` leaves to train ``targets`` targets, once the ensemble's reserve and every
    target's trial start-up are set aside."""
    return left_s - sizing.reserve_s - sizing.trials.start_s * targets


def plan_target(sizing: Sizing, target: str, left: tuple[str, ...], left_s: float, *, first: bool,
                weights: dict[str, float] = HEAD_WEIGHTS) -> HeadPlan:
    """``target``'s plan, with ``left_s`` seconds on the clock and the targets ``left`` (``target``
    first) still to train, weighted by ``weights`` (target_weights of all the run's targets);
    ``first``: nothing trained yet, so a budget too small is the user's."""
    train_s = training_s(sizing, left_s, len(left))
    if train_s < MIN_HEAD_S * len(left):
        if first:   # say so rather than overrun
            raise BudgetTooSmall(f"budget too small: {left_s:.0f} s left for {len(left)} model(s), "
                                 f"{sizing.reserve_s + sizing.trials.start_s * len(left):.0f} s of it needed "
                                 "for trial start-up and the ensemble; raise --budget or use a smaller "
                                 "--model / --img-size")
        log.warning("%s: %.0f s left, less than planned: one epoch per trial", target, left_s)
        return overrun_plan(time.time())
    phases = PHASE_SHARES if sizing.trials.samples else NO_SEARCH_SHARES
    share = share_out(train_s, left, weights, phases)[target]
    plan = budget_plan(sizing, share, time.time())
    log.info(f"{target}: {share.total_s:.0f} s: {plan.num_samples} search trial(s), {sizing.trials.folds} folds "
             f"and {plan.full_seeds} full-data model(s) of ~{plan.epochs} epoch(s) each, each trial training "
             "until its phase's deadline")
    return plan
