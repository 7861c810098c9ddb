"""No search trial starts that cannot finish an epoch before the search's deadline.

Under `run --budget` a search trial stops itself at the search deadline, but only after its
first epoch (so the cv phase always has a best config). A trial that starts late therefore
trains a whole epoch past the deadline, into the cv phase's time. This searcher wrapper stops
suggesting trials once the time left is less than a trial's first epoch (the longest one seen,
from its start to its first report, validation included); the study's first trial always starts.
The deadline is read from the workspace when asked (core/deadlines.py): a restored study has this
object as its first run pickled it, with that run's deadline.
"""
from __future__ import annotations

import time

from ray.tune.search import ConcurrencyLimiter, Searcher

from core.deadlines import current_deadline


class StartBeforeDeadline(ConcurrencyLimiter):
    def __init__(self, searcher: Searcher, max_concurrent: int, phase: tuple[str, str, str]):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.phase = phase            # (workspace root, study, phase) of the deadline file
        self.started = 0              # trials suggested so far
        self.first_epoch_s = 0.0      # longest time from a trial's start to its first report
        self.stopped_early = False    # trials were left unstarted for the deadline

    def suggest(self, trial_id: str):
        deadline = current_deadline(*self.phase)
        if self.started and deadline and time.time() + self.first_epoch_s >= deadline:
            self.stopped_early = True
            return Searcher.FINISHED
        suggestion = super().suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.started += 1
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("training_iteration") == 1:
            self.first_epoch_s = max(self.first_epoch_s, float(result.get("time_total_s", 0.0)))
        super().on_trial_result(trial_id, result)
