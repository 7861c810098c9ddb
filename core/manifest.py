"""The crop manifest: the one table preprocessing writes and training / ensemble read.

One row per train and eval image, written to ``Workspace.manifest`` (Parquet):
  path      image path relative to DATA (train/images/<p>/mask1.jpg, eval/images/<id>)
  person    person id (train) or "" (eval)
  split     train | eval
  image_id  eval ImageID ("" for train)
  kind, mask, gender, age, label   training labels (-1 for eval)
  x1,y1,x2,y2  crop box in source pixels (float)
  prob      detector probability of the chosen face (NaN when none)
  fallback  True when the crop is not a detected face (centre/person-prior crop)
  error     "" or why the image could not be read at all (then crop is "")
  crop      crop file relative to ``Workspace.crops`` (fixed size, RGB PNG/JPEG)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import DataError

COLUMNS = ("path", "person", "split", "image_id", "kind", "mask", "gender", "age", "label",
           "x1", "y1", "x2", "y2", "prob", "fallback", "error", "crop")


def read_manifest(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataError(f"{path}: no crop manifest; run `python -m orchestrator preprocess` first")
    df = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks column(s) {', '.join(missing)}; "
                        "re-run `python -m orchestrator preprocess`")
    return df
