"""Person-level stratified K-fold, saved once so every trial and the ensemble agree.

A split by image puts the same person's 7 photos on both sides and overstates F1;
``mode="image"`` exists only to measure that leak.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .atomic import write_csv_atomic
from .errors import DataError
from .labels import SEED


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


def check_fold_units(train: pd.DataFrame, spec: FoldSpec = FoldSpec()) -> None:
    """A DataError unless ``train`` has a person (an image, in image mode) for each fold."""
    units = train["person"].nunique() if spec.mode == "person" else len(train)
    if spec.k > units:   # sklearn's ValueError would be a traceback, after preprocessing
        raise DataError(f"{spec.k} {spec.mode}-level folds need at least {spec.k} {spec.mode}s; the training "
                        f"set has {units}: use --folds {units} or fewer")


def assign_folds(train: pd.DataFrame, spec: FoldSpec = FoldSpec()) -> pd.Series:
    """Fold number of every row of ``train`` (index-aligned)."""
    fold = np.full(len(train), -1)
    y = train["label"].to_numpy()
    check_fold_units(train, spec)
    if spec.mode == "person":
        splitter = StratifiedGroupKFold(spec.k, shuffle=True, random_state=spec.seed)
        splits = splitter.split(train, y, groups=train["person"].to_numpy())
    else:
        splits = StratifiedKFold(spec.k, shuffle=True, random_state=spec.seed).split(train, y)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return pd.Series(fold, index=train.index, name="fold")


def folds_key(train: pd.DataFrame) -> str:
    """What a split is made from: every image's path, person and label (after corrections)."""
    rows = sorted(f"{p}|{q}|{y}" for p, q, y in zip(train["path"], train["person"], train["label"]))
    return hashlib.sha1("\n".join(rows).encode()).hexdigest()[:12]


def fold_file(workspace: Path, spec: FoldSpec, key: str | None = None) -> Path:
    """The split of ``key`` (folds_key of the table it splits); without a key, the latest
    split made for ``spec`` (what `folds` shows and plain training loops read)."""
    name = f"{spec.mode}_k{spec.k}_seed{spec.seed}"
    return Path(workspace) / "folds" / (f"{name}-{key}.csv" if key else f"{name}.csv")


def ensure_folds(train: pd.DataFrame, workspace: Path, spec: FoldSpec = FoldSpec()) -> pd.DataFrame:
    """The saved split of exactly this table for ``spec``, made (and saved) only when none is.

    Splits are addressed by the table they split: a changed table (an image more, a corrected
    label) gets a new file, and the split an earlier study trained on stays as it was.
    """
    path = fold_file(workspace, spec, folds_key(train))
    if path.is_file():
        folds = pd.read_csv(path, dtype={"person": str})
    else:
        folds = train[["path", "person"]].assign(fold=assign_folds(train, spec).to_numpy())
        write_csv_atomic(folds, path)
    latest = fold_file(workspace, spec)
    if not latest.is_file() or latest.read_bytes() != path.read_bytes():
        write_csv_atomic(folds, latest)
        latest.with_suffix(".json").write_text(json.dumps(asdict(spec) | {"key": folds_key(train)}))
    return folds
def with_folds(train: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    return train.merge(folds[["path", "fold"]], on="path", how="left", validate="one_to_one")
