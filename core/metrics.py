"""The competition's macro F1 and friends, from one confusion matrix.

``macro_f1`` is the one F1 of the project: Tune's ``val_f1`` (so ASHA's decisions and a trial's
best epoch), the ensemble's OOF estimate, the calibration and benchmark scores all call it. It is
sklearn's ``average='macro'`` (the mean over the classes present in the truth or the
predictions; a class absent from a small fold does not count as 0), computed from a bincount:
fast enough for the calibration search's thousands of calls, where sklearn takes milliseconds.
"""
from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 of each class; NaN for a class neither present nor predicted."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes that occur in y_true or y_pred (sklearn's average='macro');
    NaN for no images at all."""
    f1 = per_class_f1(confusion(y_true, y_pred, n_classes))
    return float(np.nanmean(f1)) if np.any(~np.isnan(f1)) else float("nan")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")
