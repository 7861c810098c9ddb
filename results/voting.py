"""Combine predictions: many models of one head -> one distribution (vote), and the
three heads -> the 18 competition classes (joint log-probabilities).

Both work on plain arrays, so the eval ensemble and the out-of-fold estimate share them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from core.labels import HEADS, NUM_CLASSES, decode
from .run_schema import EVAL_VOTES, VOTES  # noqa: F401 (EVAL_VOTES: declared beside VOTES, with the params they fill)
LOG_FLOOR = 1e-6      # probabilities are floored here before the log (a hard vote has zeros)
TIE_WEIGHT = 1e-3     # weight of the summed probability in a hard vote: breaks ties only


def _stack(probs: Sequence[np.ndarray]) -> np.ndarray:
    if len(probs) == 0:
        raise ValueError("vote needs at least one model's probabilities")
    shapes = {np.shape(p) for p in probs}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"vote needs [N, C] arrays of one shape; got shapes {sorted(shapes)}")
    return np.stack([np.asarray(p, dtype=np.float64) for p in probs])


def soft_vote(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the models' probabilities, [N, C]."""
    return _stack(probs).mean(axis=0)


def hard_vote(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Vote shares of the models' argmax, [N, C] (rows sum to 1).

    A tie between classes goes to the one with the larger summed probability: its share
    gets a tiny bonus (TIE_WEIGHT) that is far too small to overturn a majority of one vote.
    """
    p = _stack(probs)
    m, n, c = p.shape
    counts = np.zeros((n, c))
    np.add.at(counts, (np.arange(n)[None, :].repeat(m, 0), p.argmax(axis=2)), 1.0)
    score = counts + TIE_WEIGHT * p.mean(axis=0)
    return score / score.sum(axis=1, keepdims=True)


def vote(probs: Sequence[np.ndarray], how: str = "soft") -> np.ndarray:
    if how not in VOTES:
        raise ValueError(f"unknown vote {how!r}; use one of {', '.join(VOTES)}")
    return soft_vote(probs) if how == "soft" else hard_vote(probs)


def joint_log_probs(head_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """[N, 18] log p(mask) + log p(gender) + log p(age) for every class (heads independent).

    Its argmax is the per-head argmax combined; per-class offsets (calibration) act on it.
    """
    missing = [h for h in HEADS if h not in head_probs]
    if missing:
        raise ValueError(f"joint_log_probs needs every head; missing {', '.join(missing)}")
    lengths = {h: len(head_probs[h]) for h in HEADS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"heads predict different numbers of images: {lengths}")
    parts = dict(zip(("mask", "gender", "age"), decode(np.arange(NUM_CLASSES))))
    out = np.zeros((lengths["mask"], NUM_CLASSES))
    for name, head in HEADS.items():
        p = np.asarray(head_probs[name], dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != head.num_classes:
            raise ValueError(f"head {name}: expected [N, {head.num_classes}] probabilities, got {p.shape}")
        out += np.log(np.clip(p, LOG_FLOOR, 1.0))[:, parts[name]]
    return out


def predict_classes(log_probs: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """18-class prediction: argmax of the joint log-probabilities plus per-class offsets."""
    scores = log_probs if offsets is None else log_probs + np.asarray(offsets)[None, :]
    return scores.argmax(axis=1)


def vote_by_key(keys: np.ndarray, probs: np.ndarray, how: str = "soft") -> tuple[np.ndarray, np.ndarray]:
    """Vote among rows that share a key (an image predicted by several models).

    Returns (unique keys, [K, C] voted distributions); the same rules as soft_vote/hard_vote.
    """
    if how not in VOTES:
        raise ValueError(f"unknown vote {how!r}; use one of {', '.join(VOTES)}")
    probs = np.asarray(probs, dtype=np.float64)
    uniq, inv = np.unique(np.asarray(keys), return_inverse=True)
    n = np.bincount(inv, minlength=len(uniq)).astype(float)[:, None]
    summed = np.zeros((len(uniq), probs.shape[1]))
    np.add.at(summed, inv, probs)
    if how == "soft":
        return uniq, summed / n
    counts = np.zeros_like(summed)
    np.add.at(counts, (inv, probs.argmax(axis=1)), 1.0)
    score = counts + TIE_WEIGHT * summed / n
    return uniq, score / score.sum(axis=1, keepdims=True)
