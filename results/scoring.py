"""Score a submission against the true classes (a leaderboard, for benchmarks on held-out data)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.errors import DataError
from core.labels import HEADS, NUM_CLASSES, decode

from core.metrics import accuracy, macro_f1


def score_submission(submission: Path | str, answers: Path | str) -> dict[str, float]:
    """18-class macro F1 and accuracy, and each head's macro F1, of ``submission``
    (ImageID,ans) against ``answers`` (ImageID,ans with the true classes)."""
    sub, ans = pd.read_csv(submission), pd.read_csv(answers)
    merged = ans.merge(sub, on="ImageID", how="left", suffixes=("_true", "_pred"))
    missing = merged["ans_pred"].isna()
    if missing.any():
        raise DataError(f"{submission}: {int(missing.sum())} image(s) of {answers} have no prediction "
                        f"(first: {merged.loc[missing, 'ImageID'].iloc[0]}); write a full submission")
    y, p = merged["ans_true"].to_numpy(int), merged["ans_pred"].to_numpy(int)
    out = {"f1": macro_f1(y, p, NUM_CLASSES), "accuracy": accuracy(y, p)}
    for (name, head), yt, yp in zip(HEADS.items(), decode(y), decode(p)):
        out[f"{name}_f1"] = macro_f1(yt, yp, head.num_classes)
    return out
