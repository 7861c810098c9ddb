"""What a person watching a study sees: a status table per phase every ~30 s (a Ray Tune
callback in the driver), and Tune's own warnings only where they mean something.

    all · cv: 2 running, 0 done, 0 failed | 4:12 elapsed, 7:48 left until the phase's deadline
      trial        fold  epoch  val_f1  best_val_f1
      7d9e8_00000  0     3/6    0.412   0.430
"""
from __future__ import annotations

import logging
import os
import time

from ray.tune import Callback

from core.deadlines import current_deadline

log = logging.getLogger(__name__)
EVERY_S = 30.0   # seconds between two status tables


def _clock(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _f1(v) -> str:
    return "-" if v is None or v != v or v < 0 else f"{v:.3f}"


class PhaseProgress(Callback):
    """Logs the phase's trials (running/done/failed, epoch, latest and best val F1) and the
    time left of its phase's deadline every ``every_s`` seconds, and once at the end.
    ``phase``: (workspace root, study, phase) of the deadline file (core/deadlines.py), read when
    shown: a restored Tuner brings back this callback as its first run made it."""

    def __init__(self, label: str, phase: tuple[str, str, str], every_s: float | None = None):
        self.label, self.phase = label, phase
        self.every_s = EVERY_S if every_s is None else every_s
        self.start = time.time()
        self.last = 0.0
        self.lines: list[str] = []   # what was logged (tests read it)

    def setup(self, **info) -> None:   # also when a restored Tuner starts again
        self.start = time.time()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.time() - self.last >= self.every_s and any(t.last_result for t in trials):
            self._show(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._show(trials)

    def _show(self, trials: list) -> None:
        self.last = time.time()
        text = self.table(trials)
        self.lines.append(text)
        log.info("%s", text)

    def table(self, trials: list) -> str:
        count = {s: sum(t.status == s for t in trials) for s in ("RUNNING", "TERMINATED", "ERROR", "PENDING")}
        elapsed = time.time() - self.start
        when = f"{_clock(elapsed)} elapsed"
        deadline = current_deadline(*self.phase)
        if deadline:
            when += f", {_clock(deadline - time.time())} left until the phase's deadline"
        head = (f"{self.label}: {count['RUNNING']} running, {count['TERMINATED']} done, {count['ERROR']} failed"
                + (f", {count['PENDING']} waiting" if count["PENDING"] else "") + f" | {when}")
        rows = [("trial", "fold", "epoch", "val_f1", "best_val_f1")]
        for t in trials:
            r, cfg = t.last_result or {}, t.config or {}
            fold = "all" if cfg.get("fold") == -1 else str(cfg.get("fold", "-"))
            epoch = f"{r.get('epoch', 0)}/{cfg.get('epochs', '?')}"
            rows.append((t.trial_id, fold, epoch, _f1(r.get("val_f1")), _f1(r.get("best_val_f1"))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        body = ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([head, *body])


def quiet_snapshot_warning(storage: str) -> None:
    """Tune warns "Experiment state snapshotting has been triggered multiple times ... may become
    a bottleneck" whenever trials checkpoint faster than every few seconds (every epoch here, with
    CheckpointConfig(num_to_keep=1)). A snapshot to a local or NFS path is a file copy that costs
    nothing; to s3:// or another remote store it is an upload, where the warning means something.
    So it is silenced for paths only (TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S,
    read when Tune starts; a value the user set wins)."""
    if "://" not in str(storage):
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
