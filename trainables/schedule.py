"""The learning-rate schedule: a short linear warm-up, then a decay to zero over the trial's
*progress*, which is the larger of the steps done (of the planned epochs) and the time used (of
the time the trial has until its deadline).

Without a deadline this is the usual per-step cosine. With one (``run --budget``) it is budgeted
training (Li, Yumer & Ramanan, ICLR 2020): a trial cut by its deadline ends at a low learning
rate instead of wherever its planned epochs had got to, and a trial whose machine runs faster
than planned keeps training at a useful rate until its deadline instead of stopping early.
A resumed trial continues from the progress it had saved, over the time left to it now.
"""
from __future__ import annotations

import math
import time

SHAPES = ("cosine", "linear")


def lr_factor(progress: float, *, shape: str = "cosine", warmup: float = 0.0) -> float:
    """The share of the peak learning rate at ``progress`` (0..1)."""
    p = min(max(progress, 0.0), 1.0)
    if warmup and p < warmup:
        return (p + 1e-3) / (warmup + 1e-3)   # never 0 on the first step
    rest = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * rest)) if shape == "cosine" else 1.0 - rest


class BudgetSchedule:
    """Sets every parameter group's learning rate from the progress; ``step()`` once per batch,
    ``state_dict`` / ``load_state_dict`` as torch's schedulers (a trial's checkpoint holds it)."""

    def __init__(self, optimizer, total_steps: int, *, shape: str = "cosine", warmup: float = 0.0,
                 clock=time.time):
        self.optimizer, self.total_steps = optimizer, max(1, total_steps)
        self.shape, self.warmup, self.clock = shape, warmup, clock
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.steps = 0
        self.end_time = 0.0       # unix time training must end by (0: none; set by the trial)
        self._start = None        # (time, progress) when this process began stepping
        self._progress = 0.0
        self._apply()

    def progress(self) -> float:
        p = self.steps / self.total_steps
        if self.end_time and self._start is not None:
            t0, p0 = self._start
            span = self.end_time - t0
            p = max(p, 1.0 if span <= 0 else p0 + (1.0 - p0) * (self.clock() - t0) / span)
        return min(1.0, max(self._progress, p))   # never backwards (an end moved later)

    def step(self) -> None:
        if self._start is None:   # time counts from the first step, not from building the model
            self._start = (self.clock(), self._progress)
        self.steps += 1
        self._progress = self.progress()
        self._apply()

    def _apply(self) -> None:
        f = lr_factor(self._progress, shape=self.shape, warmup=self.warmup)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def finish_within(self, steps: int) -> None:
        """Anneal over the next ``steps`` steps, whatever the clock says: a trial that starts with
        no time left (its deadline passed while it waited) trains one epoch, not one at rate 0."""
        self.end_time = 0.0
        self.total_steps = self.steps + max(1, steps)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "progress": self._progress, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self._progress = int(state["steps"]), float(state["progress"])
        self.base_lrs = list(state.get("base_lrs", self.base_lrs))
        self._start = None   # the time left is counted again from the resumed trial's first step
        self._apply()


END_RESERVE_S = 3.0   # a trial's end after its last step: the model file, MLflow, the checkpoint


class TrialTime:
    """When a trial under a deadline must stop *training*: the deadline less what its end costs
    (validating its last epoch, when it has a validation fold, and logging the model). Validation
    is first estimated from the epoch's own time (``val_share``: its images, views and the cost of
    a forward pass as a share of a training step), then measured."""

    def __init__(self, deadline: float, val_share: float = 0.0, clock=time.time):
        self.deadline, self.val_share, self.clock = deadline, val_share, clock
        self.epoch_s = 0.0   # the last whole training epoch
        self.val_s = 0.0     # the last validation

    def train_end(self) -> float:
        """Unix time training stops by (0: no deadline)."""
        if not self.deadline:
            return 0.0
        return self.deadline - (self.val_s or self.val_share * self.epoch_s) - END_RESERVE_S

    def epoch_done(self, seconds: float) -> None:
        self.epoch_s = max(self.epoch_s, seconds) if self.out_of_time() else seconds

    def out_of_time(self) -> bool:
        """No useful part of another epoch fits: less than a tenth of one is left."""
        return bool(self.deadline) and self.clock() >= self.train_end() - 0.1 * self.epoch_s
