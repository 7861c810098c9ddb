import time
from dataclasses import replace

import pytest

from orchestrator.chain.budget import (
    TRIAL_OVERHEAD_S,
    Clock,
    HeadShare,
    Sizing,
    Trials,
    budget_plan,
    parse_duration,
    share_out,
    trial_slots,
    waves,
)
from search_spaces import SMOKE


@pytest.mark.parametrize("text,seconds", [("23m", 1380), ("1h30m", 5400), ("90s", 90), ("90", 90),
                                          ("1.5m", 90), (45, 45), ("2h", 7200), ("1m 30s", 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["23 minutes", "m", "", "5x", "-3m"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError, match="like 23m"):
        parse_duration(bad)


def test_clock():
    c = Clock(10.0, started=time.time() - 4)
    assert 5.5 < c.left() < 6.5 and 3.9 < c.elapsed() < 4.5
    assert Clock().left() == float("inf")


def test_share_out_adds_up_and_favours_age():
    shares = share_out(1000, ("mask", "gender", "age"))
    assert sum(s.total_s for s in shares.values()) == pytest.approx(1000)
    assert shares["age"].total_s > shares["mask"].total_s
    only = share_out(100, ("gender",))
    assert only["gender"].total_s == pytest.approx(100)


def test_budget_plan_gives_cv_and_full_data_the_same_epochs_and_fits():
    two_folds = Sizing(Trials(samples=0, folds=2, seeds=2, slots=2), n_train=7000, images_per_s=100.0, max_epochs=60)
    plan = budget_plan(two_folds, HeadShare(0.0, 900.0, 0.0), start=0.0)
    # 2 folds side by side: 3,500 images an epoch; 2 full-data seeds side by side: 7,000
    assert plan.num_samples == 0 and plan.full_seeds == 2
    assert plan.epochs == plan.full_epochs == 7
    assert plan.val_from == 5                     # only the last 3 cv epochs are validated
    # the trials' start-up comes on top of the training share (plan_target set it aside)
    assert 0 < plan.cv_end < plan.full_end <= 900 + 2 * TRIAL_OVERHEAD_S
    three_folds = replace(two_folds, trials=Trials(samples=0, folds=3, seeds=2, slots=2))
    assert waves(3, 2) == 2                       # the third fold waits for a free slot
    assert budget_plan(three_folds, HeadShare(0.0, 900.0, 0.0), 0.0).epochs < plan.epochs
    # one wave: each trial trains until the phase's deadline; in waves the first would take it all
    assert plan.cv_to_deadline and plan.full_to_deadline
    assert not budget_plan(three_folds, HeadShare(0.0, 900.0, 0.0), 0.0).cv_to_deadline


def test_max_epochs_caps_what_a_long_budget_would_give():
    from orchestrator.stages.run import RunOptions
    capped = Sizing(Trials(samples=0, folds=2, seeds=2, slots=2), n_train=7000, images_per_s=100.0, max_epochs=3)
    plan = budget_plan(capped, HeadShare(0.0, 900.0, 0.0), start=0.0)
    assert plan.epochs == plan.full_epochs == 3 and plan.val_from == 1   # 7 fit (above): the cap holds
    with pytest.raises(ValueError, match="at least 1 epoch"):
        RunOptions(max_epochs=0)


def test_a_short_share_validates_every_epoch_and_still_trains_more_than_one():
    """3 validated epochs cost more than a short share has: then every epoch is validated."""
    sizing = Sizing(Trials(samples=0, folds=2, seeds=1, slots=2), n_train=7000, images_per_s=103.0, max_epochs=60)
    plan = budget_plan(sizing, HeadShare(0.0, 300.0, 0.0), start=0.0)
    assert plan.epochs == 2 and plan.val_from == 1


def test_run_options_name_a_bad_vote_or_head_choice_before_any_training():
    from orchestrator.stages.run import RunOptions
    with pytest.raises(ValueError, match="eval_vote 'folds': use one of all, full"):
        RunOptions(eval_vote="folds")
    with pytest.raises(ValueError, match="use --per-head to train only mask"):
        RunOptions(heads=("mask",))
    assert RunOptions(heads=("mask",), joint=False).targets == ("mask",)
    assert RunOptions().targets == ("all",)


def test_a_search_gets_its_own_epochs_and_cv_the_epochs_that_fit_after_it():
    sizing = Sizing(Trials(samples=4, folds=2, seeds=2, slots=2), n_train=7000, images_per_s=100.0, max_epochs=60)
    plan = budget_plan(sizing, HeadShare(200.0, 700.0, 0.0), start=0.0)
    # 4 search trials on 2 slots in 200 s: 100 s each. A search epoch trains 3,500 images and
    # validates the other 3,500 in 2 TTA views (every epoch: ASHA compares them), at 95 images/s
    # ~74 s: one epoch fits, two would overrun into cv's time
    assert plan.num_samples == 4 and plan.search_epochs == 1
    assert plan.epochs == plan.full_epochs > plan.search_epochs
    # 150 s a trial: two validated epochs (147 s), not the four that training alone would fit
    assert budget_plan(sizing, HeadShare(300.0, 700.0, 0.0), start=0.0).search_epochs == 2
    assert 0 < plan.search_end < plan.cv_end < plan.full_end


def test_trial_slots_are_bounded_by_cpus_and_gpus():
    assert trial_slots({"CPU": 2.0}, 1, 0) == 2
    assert trial_slots({"CPU": 64.0, "GPU": 4.0}, 1, 0.5) == 8        # GPUs bound GPU trials
    assert trial_slots({"CPU": 6.0, "GPU": 4.0}, 2, 0.5) == 3         # ... and CPUs still do


def test_the_speed_probe_runs_in_every_trial_slot_at_once_with_a_trials_threads():
    """The budget's training speed is measured where trials run (Ray actors holding a trial's CPUs,
    one per slot, side by side), not in the driver; the slowest slot sizes the plan."""
    import os

    from orchestrator.infra.ray_session import ray_session
    from orchestrator.stages.run import RunOptions, Sizer
    o = RunOptions(budget_s=600, model=SMOKE["model"], img_size=SMOKE["img_size"], batch_size=8, precision="fp32")
    with ray_session(num_cpus=2):
        sizer = Sizer.measure(o, n_train=100, n_eval=50)
        assert o.on_cluster().gpus_per_trial == 0   # no GPU in the cluster: run's trials ask for none
    probes = sizer.probes
    assert sizer.one_images_per_s == min(p["images_per_s"] for p in probes)
    assert len(probes) == 2 and all(p["images_per_s"] > 0 for p in probes)
    assert {p["threads"] for p in probes} == {1} and {p["device"] for p in probes} == {"cpu"}
    pids = {p["pid"] for p in probes}
    assert len(pids) == 2 and os.getpid() not in pids      # two worker processes, not the driver
    assert sizer.parallel == 2 and sizer.one_images_per_s > 0 and sizer.reserve_s > 0
