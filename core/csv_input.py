"""Reading the data set's CSV files: every problem names the file and the fix."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import DataError


def read_csv(path: Path, required: tuple[str, ...], fix: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found; {fix}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for unreadable CSVs
        raise DataError(f"{path}: not a readable CSV ({exc}); {fix}") from exc
    df.columns = [c.strip() for c in df.columns]
    twice = sorted({c for c in df.columns if list(df.columns).count(c) > 1 and c in required})
    if twice:   # "age" and "age " read as two columns: which one holds the ages is a guess
        raise DataError(f"{path}: column(s) {', '.join(twice)} appear twice in the header (spaces around a "
                        "name do not count); keep one of each")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: "
                        f"{', '.join(df.columns)}); the header must be {','.join(required)}")
    return df
