"""Reading the data set's CSV files: every problem names the file and the fix."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from .errors import DataError

MAX_AGE = 130                        # years: anything above is a typo, not a person
WHOLE = re.compile(r"[0-9]+")        # ASCII digits only: str.isdigit() also takes '²', which int() refuses
MANGLED = re.compile(r"\.\d+$")      # pandas' suffix on a repeated column name
WHOLE_FLOAT = re.compile(r"[0-9]+\.0*")   # 35.0: a spreadsheet's export of the whole number 35


def parse_age(text: str) -> tuple[int | None, str]:
    """(age in years, "") or (None, why not); "35.0" is read as 35 (spreadsheets write ages so)."""
    t = text.strip()
    if not (WHOLE.fullmatch(t) or WHOLE_FLOAT.fullmatch(t)):
        return None, f"age {text!r} is not a whole number; write the age in years"
    age = int(t.split(".")[0])
    if age > MAX_AGE:
        return None, f"age {text!r} is over {MAX_AGE}; write the age in years"
    return age, ""


def record_lines(path: Path) -> list[int]:
    """The file line each data record starts on. pandas skips blank (and blank-looking) lines and
    reads a quoted field over several lines, so a row's position plus 2 is not its line."""
    lines = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader, start = csv.reader(f), 1
        for row in reader:
            if any(cell.strip() for cell in row) or len(row) > 1:   # ",," is a row; "  " is not
                lines.append(start)
            start = reader.line_num + 1
    return lines[1:]   # the header's line is not a record's


def read_csv(path: Path, required: tuple[str, ...], fix: str) -> pd.DataFrame:
    """The table, its index the file line of each row (what an error about the row names)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; {fix}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:  # ParserError, EmptyDataError, UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: not a readable CSV ({exc}); {fix}") from exc
    df.columns = [c.strip() for c in df.columns]
    lines = record_lines(path)
    df.index = lines if len(lines) == len(df) else df.index + 2   # + 2: below the header, from 1
    # pandas renames a repeated name "id" to "id.1"; "id" and "id " only meet once stripped
    named = [MANGLED.sub("", c).strip() for c in df.columns]
    twice = sorted({c for c in named if named.count(c) > 1 and c in required})
    if twice:   # "age" and "age " read as two columns: which one holds the ages is a guess
        raise DataError(f"{path}: column(s) {', '.join(twice)} appear twice in the header (spaces around a "
                        "name do not count); keep one of each")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: "
                        f"{', '.join(df.columns)}); the header must be {','.join(required)}")
    return df
