"""Person-level stratified K-fold, saved once so every trial and the ensemble agree.

A split by image puts the same person's 7 photos on both sides and overstates F1;
``mode="image"`` exists only to measure that leak.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .atomic import write_csv_atomic

SEED = 777


@dataclass(frozen=True)
class FoldSpec:
    k: int = 5             # number of folds
    seed: int = SEED       # shuffling seed
    mode: str = "person"   # person | image (image leaks persons; for comparison only)

    def __post_init__(self):
        if self.mode not in ("person", "image"):
            raise ValueError(f"fold mode {self.mode!r}: use 'person' or 'image'")
        if self.k < 2:
            raise ValueError(f"need at least 2 folds, got {self.k}")


def assign_folds(train: pd.DataFrame, spec: FoldSpec = FoldSpec()) -> pd.Series:
    """Fold number of every row of ``train`` (index-aligned)."""
    fold = np.full(len(train), -1)
    y = train["label"].to_numpy()
    if spec.mode == "person":
        splitter = StratifiedGroupKFold(spec.k, shuffle=True, random_state=spec.seed)
        splits = splitter.split(train, y, groups=train["person"].to_numpy())
    else:
        splits = StratifiedKFold(spec.k, shuffle=True, random_state=spec.seed).split(train, y)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return pd.Series(fold, index=train.index, name="fold")


def fold_file(workspace: Path, spec: FoldSpec) -> Path:
    return Path(workspace) / "folds" / f"{spec.mode}_k{spec.k}_seed{spec.seed}.csv"


def ensure_folds(train: pd.DataFrame, workspace: Path, spec: FoldSpec = FoldSpec()) -> pd.DataFrame:
    """Load the saved assignment for ``spec`` or make and save it.

    A saved file that does not cover exactly the current images (data changed) is made
    anew rather than silently reused.
    """
    path = fold_file(workspace, spec)
    if path.is_file():
        saved = pd.read_csv(path, dtype={"person": str})
        if set(saved["path"]) == set(train["path"]):
            return saved
    folds = train[["path", "person"]].assign(fold=assign_folds(train, spec).to_numpy())
    write_csv_atomic(folds, path)
    path.with_suffix(".json").write_text(json.dumps(asdict(spec)))
    return folds


def with_folds(train: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    return train.merge(folds[["path", "fold"]], on="path", how="left", validate="one_to_one")
