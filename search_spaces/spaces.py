"""Optuna define-by-run spaces: sampling only, no I/O. A head's row in core.labels.TABLE names
its space (``space``), so heads that search the same parameters share one function.

Every head searches learning rate (log scale), loss (and its parameter) and augmentation
strength; the age head also searches the *training* age boundary. Validation F1 is always
scored on the competition boundary (>= 60), so boundaries compete fairly.
"""
from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import Callable

from core.labels import BACKBONES, get_backbone, target_row

LOSS_CHOICES = ("ce", "focal", "label_smoothing", "f1")
LR_RANGE = (1e-5, 1e-3)         # log-uniform
STRENGTH_RANGE = (0.0, 2.0)     # 0 = no augmentation, 1 = the recipe, 2 = twice as strong
OLD_FROM_RANGE = (57, 60)       # training boundary of the age head's "old" class


def _common(trial) -> None:
    trial.suggest_float("lr", *LR_RANGE, log=True)
    loss = trial.suggest_categorical("loss", LOSS_CHOICES)
    if loss == "focal":
        trial.suggest_float("gamma", 0.5, 3.0)
    elif loss == "label_smoothing":
        trial.suggest_float("smoothing", 0.02, 0.2)
    trial.suggest_float("strength", *STRENGTH_RANGE)


def head_space(trial) -> None:
    _common(trial)


def head_and_age_boundary_space(trial) -> None:
    """The age head, and a joint model (it searches what any head does)."""
    _common(trial)
    trial.suggest_int("old_from", *OLD_FROM_RANGE)


SPACES: dict[str, Callable] = {"head": head_space, "head_and_age_boundary": head_and_age_boundary_space}


def search_space(head: str) -> Callable:
    """The space the head table's row of ``head`` names."""
    return SPACES[target_row(head).space]


def with_backbones(space: Callable, names: tuple[str, ...]) -> Callable:
    """``space`` with the backbone as one more dimension: Optuna picks a name of
    core.labels.BACKBONES, and its model, input side and weights come back as constants, so a
    per-head study can pair a pretrained model with a small one trained from scratch."""
    for n in names:
        get_backbone(n)   # an unknown name fails when the study is planned, not in a trial
    return partial(_backbone_space, space, tuple(names))


def _backbone_space(space: Callable, names: tuple[str, ...], trial) -> dict:
    chosen = trial.suggest_categorical("backbone", names)
    return (space(trial) or {}) | asdict(BACKBONES[chosen])
