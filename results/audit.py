"""Label audit: evidence that a training label is wrong, from out-of-fold predictions.

Every training image has an out-of-fold (OOF) prediction from a fold model that never saw it,
and a person's seven photos share one gender and one age, so:
  gender  the person's OOF gender predictions disagree with the labelled gender;
  age     the person's OOF age classes lie on the other side of a boundary (30, or old_from);
  mask    an image's OOF mask state contradicts its file name (``mask``), and two of a
          person's files look like each other's (``swap``: incorrect_mask and normal filed
          under each other's name, or a maskN photo showing no mask while normal shows one).

Input: one row per training image (``person``, ``path``, ``kind``, ``mask``, ``gender``,
``age``) and the OOF probabilities of each head in the same row order (see ``AuditInputs``).
Scores lie in 0..1: the OOF probability of the person's other gender, of the age classes on the
other side of a boundary, of the one mask state a photo's file name denies most (a swap: the
geometric mean of both files' contradiction). Pure functions: no MLflow, no files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from core.labels import COMPETITION_OLD_AGE, HEADS, YOUNG_AGE_LIMIT, age_group

SUSPECT_COLUMNS = ("person", "image", "field", "label", "evidence", "score", "suggestion", "note")
CORRECTION_COLUMNS = ("id", "field", "value", "note")
GUESS_SPAN = 10          # an age guess lies at most this many years beyond the boundary it crosses


@dataclass(frozen=True)
class AuditInputs:
    images: pd.DataFrame                  # person, path, kind, mask, gender, age (one row per image)
    probs: Mapping[str, np.ndarray]       # head -> [N, C] OOF probabilities, rows as ``images``
    old_from: int = COMPETITION_OLD_AGE   # the models' training boundary of "old"

    def __post_init__(self):
        missing = [c for c in ("person", "path", "kind", "mask", "gender", "age") if c not in self.images.columns]
        if missing:
            raise ValueError(f"audit images lack column(s) {', '.join(missing)}")
        for name, head in HEADS.items():
            p = np.asarray(self.probs.get(name, np.zeros((0, 0))))
            if p.shape != (len(self.images), head.num_classes):
                raise ValueError(f"audit: head {name} needs [{len(self.images)}, {head.num_classes}] "
                                 f"OOF probabilities, got {p.shape}")


def _rows(person, image, field, label, evidence, score, suggestion="", note="") -> dict:
    return dict(zip(SUSPECT_COLUMNS, (person, image, field, label, evidence, round(float(score), 4),
                                      suggestion, note)))


def _per_person(inp: AuditInputs, head: str) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(persons, [P, C] mean OOF probabilities, [P, C] argmax votes) of one head."""
    p = pd.DataFrame(np.asarray(inp.probs[head], dtype=float)).assign(person=inp.images["person"].to_numpy())
    mean = p.groupby("person", sort=True).mean()
    votes = pd.get_dummies(p.drop(columns="person").to_numpy().argmax(1)).reindex(
        columns=range(HEADS[head].num_classes), fill_value=0).astype(int)
    votes = votes.assign(person=p["person"].to_numpy()).groupby("person", sort=True).sum()
    return mean.index, mean.to_numpy(), votes.to_numpy()


# -- gender ------------------------------------------------------------------------------
def gender_evidence(inp: AuditInputs, min_score: float = 0.5) -> pd.DataFrame:
    """Persons whose mean OOF probability of the other gender is at least ``min_score``."""
    names = HEADS["gender"].classes
    persons, mean, votes = _per_person(inp, "gender")
    label = inp.images.groupby("person", sort=True)["gender"].first().loc[persons].to_numpy(int)
    rows = []
    for i, person in enumerate(persons):
        other = 1 - label[i]
        score = mean[i, other]
        if score >= min_score:
            ev = (f"{votes[i, other]}/{votes[i].sum()} images predicted {names[other]} "
                  f"(mean p {score:.2f})")
            rows.append(_rows(person, "", "gender", names[label[i]], ev, score, names[other], ev))
    return pd.DataFrame(rows, columns=SUSPECT_COLUMNS)


# -- age ---------------------------------------------------------------------------------
def group_ranges(old_from: int) -> dict[int, tuple[int, int]]:
    """Ages that fall in one age class under both the training boundary and the scoring one."""
    lo_old, hi_old = sorted((old_from, COMPETITION_OLD_AGE))
    return {0: (0, YOUNG_AGE_LIMIT - 1), 1: (YOUNG_AGE_LIMIT, lo_old - 1), 2: (hi_old, 120)}


def guess_age(age: int, target: int, old_from: int) -> int:
    """An age in class ``target``: the labelled age mirrored across the boundary it crosses next
    (a filing mistake 33 -> 27 reads back 33), at most GUESS_SPAN years beyond it. A guess."""
    lo, hi = group_ranges(old_from)[target]
    current = int(age_group(age, old_from))
    b = lo if target > current else group_ranges(old_from)[target + 1][0]
    mirrored = 2 * b - 1 - age
    return int(np.clip(mirrored, max(lo, b - GUESS_SPAN), min(hi, b + GUESS_SPAN - 1)))


def age_evidence(inp: AuditInputs, min_score: float = 0.5) -> pd.DataFrame:
    """Persons whose mean OOF age probabilities put at least ``min_score`` on one side of the
    labelled class (older, or younger); the suggestion is a guessed age on that side."""
    names = HEADS["age"].classes
    persons, mean, votes = _per_person(inp, "age")
    ages = inp.images.groupby("person", sort=True)["age"].first().loc[persons].to_numpy(int)
    bounds = (YOUNG_AGE_LIMIT, inp.old_from)   # between classes 0|1 and 1|2
    rows = []
    for i, person in enumerate(persons):
        g = int(age_group(ages[i], inp.old_from))
        up, down = mean[i, g + 1:].sum(), mean[i, :g].sum()
        score, side = (up, range(g + 1, 3)) if up >= down else (down, range(0, g))
        if score < min_score or not len(side):
            continue
        target = max(side, key=lambda c: mean[i, c])
        boundary = bounds[g] if target > g else bounds[g - 1]
        n = votes[i, list(side)].sum()
        ev = (f"{n}/{votes[i].sum()} images predicted {'older' if target > g else 'younger'} than "
              f"{boundary} (p {score:.2f}; most likely {names[target]})")
        guess = guess_age(ages[i], target, inp.old_from)
        rows.append(_rows(person, "", "age", f"{ages[i]} ({names[g]})", ev, score, str(guess),
                          f"{ev}; {guess} is a guess on the other side of {boundary}: check the photos"))
    return pd.DataFrame(rows, columns=SUSPECT_COLUMNS)


# -- mask files --------------------------------------------------------------------------
def mask_image_evidence(inp: AuditInputs, min_score: float = 0.5) -> pd.DataFrame:
    """Images that look like another mask state than their file name says, with OOF probability
    >= ``min_score`` (one state, not the sum: three near-equal states are no evidence)."""
    names = HEADS["mask"].classes
    p = np.asarray(inp.probs["mask"], dtype=float)
    label = inp.images["mask"].to_numpy(int)
    other = p.copy()
    other[np.arange(len(p)), label] = -1.0
    pred = other.argmax(1)                       # the most likely state the file name denies
    score = other.max(1)
    rows = []
    for i in np.flatnonzero(score >= min_score):
        r = inp.images.iloc[i]
        ev = f"{r['kind']} looks {names[pred[i]]} (p {score[i]:.2f})"
        rows.append(_rows(r["person"], r["kind"], "mask", names[label[i]], ev, score[i]))
    return pd.DataFrame(rows, columns=SUSPECT_COLUMNS)


def swap_evidence(inp: AuditInputs, min_score: float = 0.5) -> pd.DataFrame:
    """Per person, the pair of files with different mask states that most look like each other's:
    score sqrt(p_a(state of b) * p_b(state of a)); a swap needs both files to contradict."""
    names = HEADS["mask"].classes
    p = np.asarray(inp.probs["mask"], dtype=float)
    rows = []
    for person, idx in inp.images.groupby("person", sort=True).indices.items():
        kinds = inp.images["kind"].to_numpy()[idx]
        label = inp.images["mask"].to_numpy(int)[idx]
        best = None
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if label[a] == label[b]:
                    continue
                s = float(np.sqrt(p[idx[a], label[b]] * p[idx[b], label[a]]))
                if best is None or s > best[0]:
                    best = (s, a, b)
        if best is None or best[0] < min_score:
            continue
        s, a, b = best
        pair = ":".join(sorted((kinds[a], kinds[b]), key=lambda k: (k != "incorrect_mask", k)))
        ev = (f"{kinds[a]} looks {names[label[b]]} (p {p[idx[a], label[b]]:.2f}), "
              f"{kinds[b]} looks {names[label[a]]} (p {p[idx[b], label[a]]:.2f})")
        rows.append(_rows(person, pair, "swap", f"{kinds[a]}={names[label[a]]}, {kinds[b]}={names[label[b]]}",
                          ev, s, pair, f"the two files show each other's mask state: {ev}"))
    return pd.DataFrame(rows, columns=SUSPECT_COLUMNS)


# -- together ----------------------------------------------------------------------------
def audit_suspects(inp: AuditInputs, min_score: float = 0.5) -> pd.DataFrame:
    """Every suspect of every kind, strongest evidence first."""
    parts = [f(inp, min_score) for f in (gender_evidence, age_evidence, swap_evidence, mask_image_evidence)]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=SUSPECT_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["score", "person", "field"], ascending=[False, True, True],
                           kind="stable").reset_index(drop=True)


def suggested_corrections(suspects: pd.DataFrame, min_score: float = 0.5,
                          max_per_field: int | None = None) -> pd.DataFrame:
    """The suspects that name a correction, as a --corrections file (id,field,value,note),
    strongest first; one row per person and field, at most ``max_per_field`` of each field
    (wrong labels are rare: weak fold models contradict many right ones, and applying all of
    those would add more errors than it removes)."""
    s = suspects[(suspects["suggestion"] != "") & (suspects["score"] >= min_score)]
    s = s.drop_duplicates(["person", "field"])
    if max_per_field is not None:
        s = s.groupby("field", sort=False).head(max_per_field).sort_index()
    note = [f"audit score {sc:.2f}: {n}" for sc, n in zip(s["score"], s["note"])]
    return pd.DataFrame({"id": s["person"].astype(str), "field": s["field"], "value": s["suggestion"],
                         "note": note}, columns=CORRECTION_COLUMNS).reset_index(drop=True)


def person_predictions(inp: AuditInputs) -> pd.DataFrame:
    """Per image, label and OOF prediction in words (for the contact sheet)."""
    im = inp.images.reset_index(drop=True)
    names = {h: HEADS[h].classes for h in HEADS}
    pred = {h: np.asarray(inp.probs[h]).argmax(1) for h in HEADS}
    return pd.DataFrame({
        "person": im["person"], "kind": im["kind"], "path": im["path"],
        "label": [f"{names['gender'][g][0]} {a} {names['mask'][m]}" for g, a, m in zip(im["gender"], im["age"], im["mask"])],
        "pred": [f"{names['gender'][g][0]} {names['age'][a]} {names['mask'][m]}"
                 for g, a, m in zip(pred["gender"], pred["age"], pred["mask"])]})
