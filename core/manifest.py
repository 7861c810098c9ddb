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


# what reading a cut or edited parquet file raises: pyarrow's ArrowInvalid (a ValueError) and
# IOError (an OSError), a UnicodeDecodeError or JSONDecodeError (ValueErrors) or a KeyError from
# edited pandas metadata (seen by cutting and flipping bytes of a manifest)
PARQUET_ERRORS = (OSError, ValueError, KeyError)
RERUN = "rerun `python -m orchestrator preprocess`: it crops only what is missing and reuses every whole crop"
JPEG_END = b"\xff\xd9"   # every crop is a JPEG written whole (core.atomic), so it ends with this marker


def read_manifest(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataError(f"{path}: no crop manifest; run `python -m orchestrator preprocess` first")
    try:
        df = pd.read_parquet(path)
    except PARQUET_ERRORS as exc:
        raise DataError(f"{path}: the crop manifest is damaged ({type(exc).__name__}: {exc}); {RERUN}") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks column(s) {', '.join(missing)}; "
                        "re-run `python -m orchestrator preprocess`")
    return df


def crop_whole(path: Path) -> bool:
    """The crop file is there and whole (not cut short after it was written)."""
    try:
        with open(path, "rb") as f:
            f.seek(-len(JPEG_END), 2)
            return f.read() == JPEG_END
    except OSError:   # missing, or shorter than the marker
        return False


def check_crops(crops_dir: Path, crops: list[str]) -> None:
    """DataError naming the crop files that are missing or cut short, and the rerun that fixes them."""
    bad = [c for c in crops if not crop_whole(Path(crops_dir) / c)]
    if bad:
        raise DataError(f"{crops_dir}: {len(bad)} crop file(s) missing or cut short (first: {bad[0]}); {RERUN}")
