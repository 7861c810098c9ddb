"""The plans `run --budget` gives each target, pinned over a grid of budgets, folds, seeds, search
trials, speeds and trial slots (equal counts such as folds == seeds == search trials included).

Each expected plan is derived here, from the sizing the README's "run --budget" and
benchmarks/README.md describe, with the documented numbers written out: never read from the code
under test, never a stored dump of its output.
"""
from __future__ import annotations

import itertools
import math
import time

import pytest

from orchestrator.chain.budget import BudgetTooSmall, Clock, ensemble_reserve_s
from orchestrator.stages.run import HeadPlan, RunOptions, Sizer

NOW = 1_000_000.0   # the frozen wall clock (unix seconds)

# the documented numbers
START_UP_S = 6.0                 # a trial's start-up, paid once per wave of trials
MIN_HEAD_S = 10.0                # a target with less training than this is not started
VALIDATED = 3                    # cv trials validate only their last 3 epochs ...
MARGIN = 0.95                    # ... and plans use 95% of the measured speed
PREDICT = 2 * 0.5                # 2 TTA views, each half a training step
WEIGHT = {"mask": 0.25, "gender": 0.25, "age": 0.5, "all": 1.0}
SIDE_WEIGHT = 1.0                # beside the joint model, a head's own model weighs as much as it
SEARCH, CV, FULL = 0.3, 0.5, 0.2  # the phases' shares (without a search cv and full take it all)


def waves(trials: int, slots: int) -> int:
    return -(-trials // slots)


def expected(o: RunOptions, target: str, left: tuple[str, ...], left_s: float, *, n_train: int,
             slots: int, speed: float, reserve_s: float) -> HeadPlan | type[BudgetTooSmall]:
    """The plan of ``target`` with ``left_s`` seconds on the clock and ``left`` targets to train."""
    samples = o.num_samples if o.num_samples >= 2 else 0   # one trial is no search
    seeds = o.full_seeds if o.full_seeds else slots           # 0: a full-data model per slot
    if not speed:   # no budget: the fixed settings
        return HeadPlan(samples, o.epochs, o.epochs, None, seeds)
    start_up = START_UP_S * (waves(samples, slots) + waves(o.folds, slots) + waves(seeds, slots))
    train_s = left_s - reserve_s - len(left) * start_up
    if train_s < MIN_HEAD_S * len(left):
        if left == o.targets:
            return BudgetTooSmall
        return HeadPlan(0, 1, 1, 1, 1, search_end=NOW, cv_end=NOW, full_end=NOW)
    weight = {t: SIDE_WEIGHT for t in left} if "all" in o.targets else WEIGHT   # the run's targets, not those left
    head_s = train_s * weight[target] / sum(weight[t] for t in left)
    search_s, cv_s, full_s = (head_s * SEARCH, head_s * CV, head_s * FULL) if samples else (0.0, head_s, 0.0)
    fit_s = cv_s + full_s
    speed *= MARGIN
    held_out = n_train / o.folds
    cv_epoch_s = waves(o.folds, slots) * (n_train - held_out) / speed
    full_epoch_s = waves(seeds, slots) * n_train / speed
    val_epoch_s = waves(o.folds, slots) * held_out * PREDICT / speed
    epochs = math.floor((fit_s - VALIDATED * val_epoch_s) / (cv_epoch_s + full_epoch_s))
    if epochs < VALIDATED:   # every epoch validated
        epochs = math.floor(fit_s / (cv_epoch_s + full_epoch_s + val_epoch_s))
    epochs = min(max(epochs, 1), o.max_epochs)
    search_epochs = epochs
    if samples:   # a search trial validates every epoch
        search_epoch_s = ((n_train - held_out) + held_out * PREDICT) / speed
        search_epochs = min(max(math.floor(search_s / waves(samples, slots) / search_epoch_s), 1), epochs)
    search_end = NOW + START_UP_S * waves(samples, slots) + search_s
    cv_start = search_end + START_UP_S * waves(o.folds, slots)
    cv_end = cv_start + epochs * cv_epoch_s + min(epochs, VALIDATED) * val_epoch_s
    full_end = cv_start + START_UP_S * waves(seeds, slots) + fit_s
    return HeadPlan(samples, search_epochs, epochs, epochs, seeds, val_from=max(1, epochs - VALIDATED + 1),
                    search_end=search_end, cv_end=cv_end, full_end=full_end,
                    cv_to_deadline=o.folds <= slots, full_to_deadline=seeds <= slots)


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: NOW)


LEFT_S = (40.0, 150.0, 600.0, 1380.0, 7200.0)    # seconds on the clock when the target starts
SPEEDS = (0.0, 23.0, 100.0, 481.5)               # one trial's images/s (0: no budget)
TRAIN = (560, 7000)                              # training images
SEEDS = (0, 1, 2, 3)                             # --full-seeds (0: one per trial slot)
SAMPLES = (0, 1, 2, 4)                           # --num-samples (0 and 1: no search)


def kind(want: HeadPlan | type[BudgetTooSmall], max_epochs: int) -> str:
    """Which branch of the sizing a plan comes from."""
    if want is BudgetTooSmall:
        return "too small"
    if want.full_epochs is None:
        return "no budget"
    if want.search_end == NOW:
        return "one epoch each: earlier targets overran"
    return ("every epoch validated" if want.epochs < VALIDATED else "last epochs validated") + (
        ", capped" if want.epochs == max_epochs else "") + (
        ", shorter search" if want.search_epochs < want.epochs else "")


def plans_match(folds: int, slots: int, joint: bool, max_epochs: int, speeds: dict[str, float] | None,
                head_backbone: tuple[str, ...] = ()):
    """Every plan of the grid for one (folds, slots) pair: the mismatches and the branches reached."""
    wrong, kinds = [], set()
    for seeds, num_samples in itertools.product(SEEDS, SAMPLES):
        o = RunOptions(budget_s=1380, folds=folds, full_seeds=seeds, num_samples=num_samples,
                       max_epochs=max_epochs, joint=joint, head_backbone=head_backbone)
        for left_s, one, n_train, i in itertools.product(LEFT_S, SPEEDS, TRAIN, range(len(o.targets))):
            reserve_s = 0.0 if not one else 108.0
            sizer = Sizer(o, n_train, slots, one, reserve_s, speeds=speeds if one else None)
            target, left = o.targets[i], o.targets[i:]
            speed = (speeds or {}).get(target, one) if one else 0.0
            want = expected(o, target, left, left_s, n_train=n_train, slots=slots, speed=speed, reserve_s=reserve_s)
            kinds.add(kind(want, max_epochs))
            if want is BudgetTooSmall:
                with pytest.raises(BudgetTooSmall, match="budget too small"):
                    sizer.plan(target, left, Clock(left_s, started=NOW))
                continue
            got = sizer.plan(target, left, Clock(left_s, started=NOW))
            if got != want:   # exactly: the deadlines too, to the last bit
                wrong.append((dict(target=target, left_s=left_s, one=one, n_train=n_train, seeds=seeds,
                                   num_samples=num_samples), got, want))
    assert not wrong, f"{len(wrong)} plan(s) differ, the first: {wrong[0]}"
    return kinds


@pytest.mark.parametrize("slots", [1, 2, 4])
@pytest.mark.parametrize("folds", [2, 3, 4, 5])
def test_joint_model_plans_follow_the_documented_sizing(frozen_clock, folds, slots):
    plans_match(folds, slots, joint=True, max_epochs=60, speeds=None)


@pytest.mark.parametrize("slots", [1, 2, 4])
@pytest.mark.parametrize("folds", [2, 3, 5])
def test_per_head_plans_share_the_time_left_by_weight_at_each_backbones_speed(frozen_clock, folds, slots):
    """Three heads, each planned from the time left when it starts; mask and age train on
    backbones of their own speed, gender at the slowest slot's."""
    plans_match(folds, slots, joint=False, max_epochs=60, speeds={"mask": 481.5, "age": 61.0})


@pytest.mark.parametrize("slots", [1, 2])
@pytest.mark.parametrize("folds", [2, 5])
def test_a_head_of_its_own_beside_the_joint_model_gets_as_much_time_at_its_speed(frozen_clock, folds, slots):
    """`run --head-backbone gender=resnet10t-64`: the joint model, then a gender model on a faster
    backbone, each planned from the time left when it starts, the first half of it to the joint."""
    kinds = plans_match(folds, slots, joint=True, max_epochs=60, speeds={"all": 48.0, "gender": 207.0},
                        head_backbone=("gender=resnet10t-64",))
    assert {"last epochs validated", "one epoch each: earlier targets overran"} <= kinds


@pytest.mark.parametrize("slots", [1, 2])
def test_two_heads_of_their_own_share_equally_after_the_joint_model_too(frozen_clock, slots):
    """With gender and age each on a model of its own, the time left after the joint model splits
    evenly between them (not by the per-head weights, which give age half)."""
    kinds = plans_match(2, slots, joint=True, max_epochs=60, speeds={"all": 48.0, "gender": 207.0, "age": 207.0},
                        head_backbone=("gender=resnet10t-64", "age=resnet10t-64"))
    assert "last epochs validated" in kinds


@pytest.mark.parametrize("slots", [1, 2])
def test_max_epochs_caps_every_plan(frozen_clock, slots):
    plans_match(3, slots, joint=True, max_epochs=4, speeds=None)


def test_the_grid_reaches_every_branch_of_the_sizing(frozen_clock):
    """The grid is worth its time only where it reaches each branch (a few cases show it)."""
    kinds = (plans_match(2, 2, joint=True, max_epochs=60, speeds=None)
             | plans_match(2, 2, joint=False, max_epochs=60, speeds={"mask": 481.5, "age": 61.0}))
    assert kinds == {"too small", "no budget", "one epoch each: earlier targets overran",
                     "every epoch validated", "every epoch validated, shorter search",
                     "last epochs validated", "last epochs validated, shorter search",
                     "last epochs validated, capped", "last epochs validated, capped, shorter search"}


@pytest.mark.parametrize("models,n_eval,slots,speed", [(1, 50, 1, 23.0), (9, 3500, 2, 100.0), (8, 1200, 4, 481.5)])
def test_the_ensembles_reserve_is_its_fixed_work_and_every_models_predictions(models, n_eval, slots, speed):
    fixed_s = 10.0 + 5.0 + 10.0   # the ensemble's steps, the audit, the prediction tasks' start
    waves = -(-models // slots)    # one model per slot at a time: 9 models on 2 slots take 5 turns
    predict_s = 1.7 * waves * n_eval * PREDICT / speed   # 1.7: reading the crops, which the probe skips
    assert ensemble_reserve_s(models, n_eval, slots, speed) == pytest.approx(1.1 * (fixed_s + predict_s))


def test_the_reserve_covers_what_the_measured_runs_took():
    """The 23-minute runs the constants were fitted to (the first three) and checked on (the fourth)
    (benchmarks/README.md, "The budget's reserve"):
    each run's reserve is above what its ensemble and audit took, and not by much."""
    runs = ((48.19, 0.0929, 55.0 + 3.7), (207.36, 0.2111, 37.3 + 3.5), (51.37, 0.0967, 62.8 + 4.0),
            (211.73, 0.2439, 40.1 + 3.7))
    for speed, forward_cost, took in runs:
        reserve = ensemble_reserve_s(2, 7000, 2, speed, forward_cost)
        assert 1.1 * took < reserve < took + 25, (reserve, took)   # a tenth to spare, not a minute


def test_the_budget_costs_the_views_the_models_predict():
    # the budget counts views by name without torch; a view added to the loop must be costed
    from trainables.config import PREDICTED_VIEWS, TTA_VIEW_NAMES
    from trainables.loop import TTA_VIEWS
    assert tuple(TTA_VIEWS) == TTA_VIEW_NAMES
    assert PREDICTED_VIEWS == 1 + len(TTA_VIEWS)
