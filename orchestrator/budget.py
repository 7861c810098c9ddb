"""A wall-clock budget for `run --budget 23m`, shared out over the stages.

The orchestrator, not the user, sizes the work: preprocessing runs first and is measured,
the ensemble's share is reserved, and what is left is split over the heads and their
phases. Each trial also gets a deadline, so a slow machine stops training early instead
of overrunning.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class HeadShare:
    search_s: float
    cv_s: float
    full_s: float

    @property
    def total_s(self) -> float:
        return self.search_s + self.cv_s + self.full_s


# the age head is the hard one (rare >=60 class, from-scratch features): it gets the most
HEAD_WEIGHTS = {"mask": 0.25, "gender": 0.25, "age": 0.5, "all": 1.0}
PHASE_SHARES = (0.3, 0.5, 0.2)   # search, cv, full-data retrain


def share_out(seconds: float, heads: tuple[str, ...], weights: dict[str, float] = HEAD_WEIGHTS,
              phases: tuple[float, float, float] = PHASE_SHARES) -> dict[str, HeadShare]:
    """Split ``seconds`` of training over heads (by weight) and their phases."""
    total_w = sum(weights[h] for h in heads)
    out = {}
    for h in heads:
        s = seconds * weights[h] / total_w
        out[h] = HeadShare(*(s * p for p in phases))
    return out
