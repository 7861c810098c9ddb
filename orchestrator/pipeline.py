"""`run`: every stage in order on one data set (the README's main command).

Without a budget it uses small fixed settings that finish the demo data on a laptop CPU.
With ``--budget`` the orchestrator sizes the work itself (orchestrator/budget.py): it
measures preprocessing, reserves the ensemble's share, measures how fast this machine
trains the chosen model, and gives each head's phases epochs and deadlines that fit.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .budget import PHASE_SHARES, Clock, HeadShare, share_out
from .dataset import load_train
from .demo_data import write_demo_data
from .eda import write_eda
from .labels import HEADS
from .preprocess import preprocess
from .ray_session import ray_session
from .workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    budget_s: float | None = None        # wall-clock seconds for the whole chain (None: fixed settings)
    heads: tuple[str, ...] = tuple(HEADS)
    smoke_test: bool = False             # CI: tiny model, 32 px, 1 epoch, 2 folds
    model: str = "resnet10t"             # timm model of every head (the recipe: efficientnet_b3 on GPU)
    img_size: int = 64                   # input side in pixels
    batch_size: int = 64
    folds: int = 3                       # person-level folds (cv models vote in the ensemble)
    num_samples: int = 2                 # search trials per head (the recipe's point is the first)
    epochs: int = 4                      # epochs per trial (a budget replaces this)
    max_epochs: int = 30                 # cap on what a budget may give one trial
    study: str = "run"                   # study name prefix: <study>-<head>
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1
    tracking_uri: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    calibrate: bool = True               # macro-F1 offsets fitted on the OOF predictions

    def __post_init__(self):
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown head(s) {', '.join(unknown)}; valid heads: {', '.join(HEADS)}")


@dataclass(frozen=True)
class HeadPlan:
    """What one head's study gets: trials, epochs and, under a budget, deadlines."""
    num_samples: int
    epochs: int                   # per search / cv trial
    full_epochs: int | None       # cap for the full-data retrain (None: the folds' median)
    search_end: float = 0.0       # unix deadlines (0 = none)
    cv_end: float = 0.0
    full_end: float = 0.0


def ensure_data(data: Path) -> Path:
    """Make the demo data in ``data`` when it holds no data set yet (and say so)."""
    if not (Path(data) / "train" / "train.csv").exists():
        print(f"no data set in {data}: writing the built-in demo data there")
        write_demo_data(data)
    return Path(data)


def fixed_plan(o: RunOptions) -> HeadPlan:
    return HeadPlan(num_samples=o.num_samples, epochs=o.epochs, full_epochs=None)


def budget_plan(o: RunOptions, share: HeadShare, n_train: int, images_per_s: float, start: float,
                full_images_per_s: float | None = None) -> HeadPlan:
    """Epochs and trial counts that fit ``share`` at the measured speed.

    cv trains K fold models on (K-1)/K of the data each; the machine's measured speed is
    shared by the trials running at once, so cost = images / speed whatever the concurrency.
    """
    per_epoch_fold = n_train * (o.folds - 1) / o.folds
    epochs = math.floor(share.cv_s * images_per_s / (o.folds * per_epoch_fold))
    epochs = max(1, min(o.max_epochs, epochs))
    trial_cost = epochs * per_epoch_fold / images_per_s
    samples = max(1, min(o.num_samples, math.floor(share.search_s / max(trial_cost, 1e-9))))
    full_speed = full_images_per_s or images_per_s
    full_epochs = max(1, min(o.max_epochs, math.floor(share.full_s * full_speed / n_train)))
    search_end = start + share.search_s
    return HeadPlan(samples, epochs, full_epochs, search_end=search_end,
                    cv_end=search_end + share.cv_s, full_end=search_end + share.cv_s + share.full_s)


def run_all(data: Path, ws: Workspace, options: RunOptions = RunOptions()) -> dict:
    o = options
    clock = Clock(o.budget_s)
    data = ensure_data(data)
    ws.make()
    train = load_train(data)
    write_eda(train, ws.results / "eda")
    plans = {}
    with ray_session(o.address, o.num_cpus):
        crops = preprocess(data, ws, progress=False)
        print(crops.attrs["summary"].line())
        sizer = Sizer.measure(o, int((crops["split"] == "train").sum()), int((crops["split"] == "eval").sum()))
        for i, head in enumerate(o.heads):
            # planned when the head starts, from the time really left: an earlier head's
            # overrun is taken from the later ones, never from the ensemble's reserve
            plans[head] = sizer.plan(head, o.heads[i:], clock)
            train_head_models(data, ws, head, o, plans[head])
        result = run_ensemble(data, ws, o)
    print(f"done in {clock.elapsed():.0f} s" + (f" of a {o.budget_s:.0f} s budget" if o.budget_s else ""))
    return {"plans": plans, "ensemble": result, "seconds": clock.elapsed()}


TRIAL_OVERHEAD_S = 6.0      # Ray Tune start + MLflow logging per trial, measured on 2 cores
ENSEMBLE_FIXED_S = 30.0     # MLflow downloads, report plots, submission
MIN_HEAD_S = 10.0           # less training than this per head is not worth starting


@dataclass(frozen=True)
class Sizer:
    """Turns the time left into a head's plan, at this machine's measured training speed."""
    options: RunOptions
    n_train: int
    images_per_s: float = 0.0     # 0 = no budget: fixed settings
    reserve_s: float = 0.0        # kept for the ensemble
    trial_images_per_s: float = 0.0  # one trial alone (the full-data retrain is one trial)

    @classmethod
    def measure(cls, o: RunOptions, n_train: int, n_eval: int) -> "Sizer":
        if o.budget_s is None or o.smoke_test:
            return cls(o, n_train)
        from search_spaces import recipe_config
        from trainables.speed import train_images_per_s
        import ray
        # one trial's speed with the threads it will have (Ray gives a trial OMP threads = its
        # CPUs; two OpenMP threads on a busy 2-core box run 10x slower than one), times the
        # trials that run side by side
        threads = max(1, int(o.cpus_per_trial))
        parallel = max(1, int(ray.cluster_resources().get("CPU", 1) // max(o.cpus_per_trial, 1e-9)))
        one = train_images_per_s(recipe_config(o.heads[0], model=o.model, img_size=o.img_size,
                                               batch_size=o.batch_size), threads=threads)
        speed = parallel * one
        models = len(o.heads) * (o.folds + 1)
        # prediction (2 TTA views) runs ~3x faster than training; the OOF table is already made
        reserve = ENSEMBLE_FIXED_S + models * n_eval * 2 / (3 * speed)   # models predict side by side
        print(f"budget: {speed:.0f} training images/s measured ({parallel} trial(s) at once); {reserve:.0f} s reserved for the ensemble")
        return cls(o, n_train, speed, reserve, one)

    def plan(self, head: str, heads_left: tuple[str, ...], clock: Clock) -> HeadPlan:
        o = self.options
        if not self.images_per_s:
            return fixed_plan(o)
        overhead = (o.num_samples + o.folds + 1) * TRIAL_OVERHEAD_S
        train_s = clock.left() - self.reserve_s - overhead * len(heads_left)
        if train_s < MIN_HEAD_S * len(heads_left):
            if heads_left == o.heads:   # nothing trained yet: say so rather than overrun
                raise ValueError(f"budget too small: {clock.left():.0f} s left for {len(heads_left)} head(s), "
                                 f"{self.reserve_s + overhead * len(heads_left):.0f} s of it needed for trial "
                                 "start-up and the ensemble; raise --budget or use a smaller --model / --img-size")
            # earlier heads overran (a loaded machine): this one still gets its models, one
            # epoch per trial, rather than failing the whole run at the end
            log.warning("%s: %.0f s left, less than planned: one search trial, one epoch per trial", head, clock.left())
            now = time.time()
            return HeadPlan(1, 1, 1, search_end=now, cv_end=now, full_end=now)
        # a search of one trial only picks the recipe's config: give its time to cv and full
        phases = PHASE_SHARES if o.num_samples > 1 else (0.1, 0.6, 0.3)
        share = share_out(train_s, heads_left, phases=phases)[head]
        plan = budget_plan(o, share, self.n_train, self.images_per_s, time.time(), self.trial_images_per_s)
        print(f"{head}: {share.total_s:.0f} s: {plan.num_samples} search trial(s) of {plan.epochs} epoch(s), "
              f"{o.folds} folds, full-data retrain <= {plan.full_epochs} epoch(s)")
        return plan


def train_head_models(data: Path, ws: Workspace, head: str, o: RunOptions, plan: HeadPlan) -> None:
    """search + cv (tune) and the full-data retrain of one head."""
    from .retrain import retrain_head
    from .study import TuneOptions, tune_head
    sized = {} if o.smoke_test else dict(model=o.model, img_size=o.img_size, batch_size=o.batch_size,
                                         epochs=plan.epochs)
    opts = TuneOptions(num_samples=1 if o.smoke_test else plan.num_samples, folds=o.folds,
                       smoke_test=o.smoke_test, study=f"{o.study}-{head}", tracking_uri=o.tracking_uri,
                       address=o.address, gpus_per_trial=o.gpus_per_trial, cpus_per_trial=o.cpus_per_trial,
                       resume=True, verbose=0, **sized)
    # search trials stop themselves at the search deadline, after at least one epoch, so the
    # cv phase always has a best config; no Tune time budget, which could kill the first trial
    # before it reports (a busy machine) and leave cv nothing to train
    tune_head(data, ws, head, replace(opts, phase="search", deadline=plan.search_end))
    best = tune_head(data, ws, head, replace(opts, phase="cv", deadline=plan.cv_end))
    print(f"{head}: cv folds best val F1 " + ", ".join(
        f"{f:.3f}" for f in best.loc[best["phase"] == "cv", "best_val_f1"].astype(float)))
    retrain_head(data, ws, head, study=f"{o.study}-{head}", tracking_uri=o.tracking_uri,
                 gpus_per_trial=o.gpus_per_trial, cpus_per_trial=o.cpus_per_trial, address=o.address,
                 verbose=0, deadline=plan.full_end, epochs=plan.full_epochs)


def run_ensemble(data: Path, ws: Workspace, o: RunOptions):
    from .ensemble import EnsembleOptions, ensemble
    # under a budget the models predict as Ray tasks side by side (the reserve assumes so)
    res = ensemble(data, ws, EnsembleOptions(tracking_uri=o.tracking_uri, calibrate=o.calibrate,
                                             use_ray=o.budget_s is not None and not o.smoke_test,
                                             gpus_per_model=o.gpus_per_trial, cpus_per_model=o.cpus_per_trial))
    print(f"submission: {res.submission}\nreport:     {res.report_dir}\n"
          f"MLflow:     {ws.tracking_uri(o.tracking_uri)} (mlflow ui --backend-store-uri "
          f"{ws.tracking_uri(o.tracking_uri)})")
    return res
