"""Hand-made label corrections, applied at load time (the recipe fixed wrong labels).

corrections.csv:  id,field,value[,note]
  000123,gender,female            the person's gender
  000123,age,61                   the person's age in years
  000123,swap,incorrect_mask:normal   the two image files show each other's mask state
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .csv_input import parse_age, read_csv
from .errors import DataError
from .labels import GENDERS, IMAGE_KINDS

log = logging.getLogger(__name__)
FIELDS = ("gender", "age", "swap")


def _apply_one(df: pd.DataFrame, person: str, field: str, value: str) -> str:
    """Apply one correction in place; returns a description or raises ValueError(fix)."""
    rows = df["person"] == person
    if field == "gender":
        if value.lower() not in GENDERS:
            raise ValueError(f"gender {value!r} is not one of {', '.join(GENDERS)}")
        old = int(df.loc[rows, "gender"].iloc[0])
        df.loc[rows, "gender"] = GENDERS[value.lower()]
        return f"person {person}: gender {list(GENDERS)[old]} -> {value.lower()}"
    if field == "age":
        age, why = parse_age(value)
        if age is None:
            raise ValueError(why)
        old = int(df.loc[rows, "age"].iloc[0])
        df.loc[rows, "age"] = age
        return f"person {person}: age {old} -> {age}"
    kinds = value.replace("|", ":").split(":")
    if len(kinds) != 2 or any(k not in IMAGE_KINDS for k in kinds):
        raise ValueError(f"swap {value!r} must be two image kinds like incorrect_mask:normal")
    a, b = (rows & (df["kind"] == k) for k in kinds)
    if not a.any() or not b.any():
        raise ValueError(f"person has no {kinds[0] if not a.any() else kinds[1]} image")
    ma, mb = int(df.loc[a, "mask"].iloc[0]), int(df.loc[b, "mask"].iloc[0])
    df.loc[a, "mask"], df.loc[b, "mask"] = mb, ma
    return f"person {person}: swapped mask labels of {kinds[0]} and {kinds[1]}"


def _near(person: str, persons: set[str]) -> str:
    """A hint for an id a spreadsheet stripped of its leading zeros (123 for 000123)."""
    alike = sorted(p for p in persons if p.lstrip("0") == person.lstrip("0") and p != person)
    return f" (train.csv has {', '.join(map(repr, alike[:3]))}: ids are text, leading zeros count)" if alike else ""


def apply_corrections(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Return a corrected copy; the applied changes are logged and kept in df.attrs."""
    table = read_csv(path, ("id", "field", "value"), "columns are id,field,value[,note]")
    df = df.copy()
    persons = set(df["person"])
    applied, problems = [], []
    for i, row in table.iterrows():
        where = f"{path} line {i}"
        person, field, value = row["id"].strip(), row["field"].strip(), row["value"].strip()
        if person not in persons:
            problems.append(f"{where}: id {person!r} is not in train.csv; fix the id{_near(person, persons)}")
        elif field not in FIELDS:
            problems.append(f"{where}: field {field!r} is not one of {', '.join(FIELDS)}")
        else:
            try:
                applied.append(_apply_one(df, person, field, value))
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
    if problems:
        raise DataError(problems)
    for a in applied:
        log.info("correction: %s", a)
    df.attrs["corrections"] = applied
    return df
