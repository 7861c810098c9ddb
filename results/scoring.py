"""Score a submission against the true classes (a leaderboard, for benchmarks on held-out data)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.csv_input import WHOLE, read_csv
from core.errors import DataError
from core.labels import HEADS, NUM_CLASSES, decode

from core.metrics import accuracy, macro_f1

COLUMNS = ("ImageID", "ans")


def read_classes(path: Path | str, what: str) -> pd.Series:
    """ImageID -> class (0..17) of a submission or answers file; DataError naming every bad line."""
    path = Path(path)
    table = read_csv(path, COLUMNS, f"{what} is ImageID,ans with one class (0-{NUM_CLASSES - 1}) per image")
    problems, seen = [], {}
    for i, image_id, ans in zip(table.index, table["ImageID"], table["ans"]):   # index: the file line
        where = f"{path} line {i}"
        if image_id in seen:
            problems.append(f"{where}: ImageID {image_id!r} also on line {seen[image_id]}; list every image once")
        seen.setdefault(image_id, i)
        if not WHOLE.fullmatch(ans.strip()) or int(ans) >= NUM_CLASSES:
            problems.append(f"{where}: ans {ans!r} is not a class 0-{NUM_CLASSES - 1}; write the class number")
    if problems:
        raise DataError(problems)
    return pd.Series(table["ans"].astype(int).to_numpy(), index=table["ImageID"], name="ans")


def score_submission(submission: Path | str, answers: Path | str) -> dict[str, float]:
    """18-class macro F1 and accuracy, and each head's macro F1, of ``submission``
    (ImageID,ans) against ``answers`` (ImageID,ans with the true classes)."""
    ans, sub = read_classes(answers, "an answers file"), read_classes(submission, "a submission")
    missing = ~ans.index.isin(sub.index)
    if missing.any():
        raise DataError(f"{submission}: {int(missing.sum())} image(s) of {answers} have no prediction "
                        f"(first: {ans.index[missing][0]}); write a full submission")
    return score_classes(ans.to_numpy(), sub.loc[ans.index].to_numpy())


def score_classes(y, p) -> dict[str, float]:
    """18-class macro F1 and accuracy, and each head's macro F1, of predicted classes ``p``
    against the true classes ``y``."""
    out = {"f1": macro_f1(y, p, NUM_CLASSES), "accuracy": accuracy(y, p)}
    for (name, head), yt, yp in zip(HEADS.items(), decode(y), decode(p)):
        out[f"{name}_f1"] = macro_f1(yt, yp, head.num_classes)
    return out
