"""Age read as ordinal: the expected age group cut at two points, fitted for macro F1.

The age head's three classes are ordered (<30, 30..59, >=60). Instead of their argmax, each
image gets one score, the expected group under the head's probabilities (0..2), and two cut
points turn it back into a group. The cuts are fitted on the out-of-fold predictions for the
18-class macro F1, with mask and gender as the (calibrated) prediction has them: macro F1 rewards
the rare >=60 class, which an ordinal cut can reach from the middle group's side without moving
the young/middle boundary. Unlike the calibration offsets, the cuts get no held-out check by
person: any gain on the OOF predictions is taken (measured, benchmarks/README.md: within the
noise, so this read is not a default).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.labels import NUM_CLASSES
from core.metrics import macro_f1

AGE_DECODES = ("argmax", "ordinal")   # how the ensemble reads the age head (EnsembleOptions.age_decode)
AGE_GROUPS = 3
GRID_QUANTILES = np.linspace(0.005, 0.995, 100)   # candidate cuts: quantiles of the OOF score


def age_score(log_probs: np.ndarray) -> np.ndarray:
    """[N, 18] joint log-probabilities -> [N] expected age group (0..2) of the age marginal."""
    lp = np.asarray(log_probs, dtype=np.float64)
    p = np.exp(lp - lp.max(axis=1, keepdims=True))
    age = p.reshape(len(p), -1, AGE_GROUPS).sum(axis=1)   # class = mask*6 + gender*3 + age
    return age @ np.arange(AGE_GROUPS) / age.sum(axis=1)


def with_age(pred: np.ndarray, score: np.ndarray, cuts: tuple[float, float]) -> np.ndarray:
    """``pred``'s 18 classes with the age group read from ``score`` at ``cuts`` (lower, upper)."""
    pred = np.asarray(pred)
    return pred - pred % AGE_GROUPS + np.searchsorted(np.asarray(cuts), score, side="right")


@dataclass(frozen=True)
class OrdinalCuts:
    cuts: tuple[float, float]   # a score below cuts[0] is <30, from cuts[1] on >=60
    f1_before: float            # OOF macro F1 of the prediction the cuts replace the age of
    f1_after: float             # ... with the age from the cuts (never below f1_before on the OOF)

    def apply(self, log_probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
        if np.isnan(self.cuts[0]):   # no cut beat the argmax on the OOF: keep it
            return np.asarray(pred)
        return with_age(pred, age_score(log_probs), self.cuts)


def fit_cuts(log_probs: np.ndarray, y_true: np.ndarray, pred: np.ndarray) -> OrdinalCuts:
    """The two cuts on the OOF age score with the best 18-class macro F1, every pair of the
    score's quantiles tried. Where none beats ``pred``'s own ages, the cuts that reproduce the
    argmax best are not searched for: the result says so by f1_after == f1_before and
    cuts that are NaN (apply() then keeps ``pred``)."""
    y_true, pred = np.asarray(y_true), np.asarray(pred)
    if len(y_true) == 0 or len(y_true) != len(pred) or len(pred) != len(log_probs):
        raise ValueError(f"ordinal cuts need matching, non-empty predictions and labels "
                         f"({len(log_probs)}, {len(pred)}, {len(y_true)})")
    score = age_score(log_probs)
    grid = np.unique(np.quantile(score, GRID_QUANTILES))
    before = best = macro_f1(y_true, pred, NUM_CLASSES)
    cuts = (float("nan"), float("nan"))
    for i, lo in enumerate(grid):
        for hi in grid[i:]:
            f1 = macro_f1(y_true, with_age(pred, score, (lo, hi)), NUM_CLASSES)
            if f1 > best:   # strictly better: ties keep the earlier (lower) pair, deterministic
                best, cuts = f1, (float(lo), float(hi))
    return OrdinalCuts(cuts, before, best)
