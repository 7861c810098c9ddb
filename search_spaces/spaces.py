"""Optuna define-by-run spaces: sampling only, no I/O (see STYLE.md).

Every head searches learning rate (log scale), loss (and its parameter) and augmentation
strength; the age head also searches the *training* age boundary. Validation F1 is always
scored on the competition boundary (>= 60), so boundaries compete fairly.
"""
from __future__ import annotations

from typing import Callable

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


def mask_space(trial) -> None:
    _common(trial)


def gender_space(trial) -> None:
    _common(trial)


def age_space(trial) -> None:
    _common(trial)
    trial.suggest_int("old_from", *OLD_FROM_RANGE)


# a joint model (every head in one) searches what any head does, the age boundary included
SPACES: dict[str, Callable] = {"mask": mask_space, "gender": gender_space, "age": age_space, "all": age_space}


def search_space(head: str) -> Callable:
    if head not in SPACES:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(SPACES)}")
    return SPACES[head]
