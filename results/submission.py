"""The submission file: ``ImageID,ans`` in the order of ``info.csv``, written atomically.

Checked before writing: every ImageID of info.csv predicted exactly once, nothing extra,
every class in 0..17; a submission that would be scored wrong is never written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from core.atomic import write_csv_atomic
from core.errors import DataError
from core.labels import NUM_CLASSES


def _problems(order: Sequence[str], pred: pd.DataFrame, where: str) -> list[str]:
    problems = []
    dup = pred["image_id"][pred["image_id"].duplicated()].unique().tolist()
    if dup:
        problems.append(f"{where}: ImageID(s) predicted more than once: {', '.join(map(str, dup[:10]))}")
    missing = sorted(set(order) - set(pred["image_id"]))
    if missing:
        problems.append(f"{where}: {len(missing)} ImageID(s) of info.csv have no prediction, "
                        f"e.g. {', '.join(missing[:10])}")
    extra = sorted(set(pred["image_id"]) - set(order))
    if extra:
        problems.append(f"{where}: {len(extra)} predicted ImageID(s) are not in info.csv, "
                        f"e.g. {', '.join(map(str, extra[:10]))}")
    ans = pd.to_numeric(pred["ans"], errors="coerce")
    bad = pred["image_id"][ans.isna() | (ans % 1 != 0) | (ans < 0) | (ans >= NUM_CLASSES)].tolist()
    if bad:
        problems.append(f"{where}: class outside 0..{NUM_CLASSES - 1} for ImageID(s) {', '.join(map(str, bad[:10]))}")
    return problems


def write_submission(order: Sequence[str], pred: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """Write ``pred`` (columns image_id, ans) as ``ImageID,ans`` in ``order`` (info.csv's)."""
    path = Path(path)
    problems = _problems(list(order), pred, f"submission {path}")
    if problems:
        raise DataError(problems)
    ans = pred.set_index("image_id")["ans"].reindex(list(order)).to_numpy().astype(np.int64)
    sub = pd.DataFrame({"ImageID": list(order), "ans": ans})
    write_csv_atomic(sub, path)
    return sub
