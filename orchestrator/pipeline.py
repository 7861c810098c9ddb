"""`run`: every stage in order on one data set (the README's main command)."""
from __future__ import annotations

import logging
from pathlib import Path

from .dataset import load_train
from .demo_data import write_demo_data
from .eda import write_eda
from .folds import FoldSpec, ensure_folds
from .preprocess import preprocess
from .workspace import Workspace

log = logging.getLogger(__name__)


def ensure_data(data: Path) -> Path:
    """Make the demo data in ``data`` when it holds no data set yet (and say so)."""
    if not (Path(data) / "train" / "train.csv").exists():
        print(f"no data set in {data}: writing the built-in demo data there")
        write_demo_data(data)
    return Path(data)


def run_all(data: Path, ws: Workspace) -> dict:
    data = ensure_data(data)
    ws.make()
    crops = preprocess(data, ws)
    print(crops.attrs["summary"].line())
    train = load_train(data)
    eda = write_eda(train, ws.results / "eda")
    folds = ensure_folds(train, ws.root, FoldSpec())
    print(f"EDA in {ws.results / 'eda'}; {folds['fold'].nunique()} person-level folds saved")
    return {"eda": eda, "manifest": crops}
