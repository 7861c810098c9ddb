"""Hypothesis strategies for the CSV files users hand the orchestrator, and the CSV writer that
renders them as spreadsheets and editors export them (BOM, CRLF, every cell quoted, columns in
any order, extra and missing columns)."""
from __future__ import annotations

import csv
import io
import re

from hypothesis import strategies as st

# any character a cell may hold except line breaks (a quoted cell may hold one, but then a file's
# "line N" is no longer its record N) and lone surrogates (not encodable)
CELL_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")
ODD_TEXT = st.text(CELL_CHARS, max_size=6)
SPACE = st.sampled_from(["", " ", "  ", "\t", "\u00a0"])


@st.composite
def padded(draw, inner) -> str:
    """``inner`` with whitespace around it, sometimes (a spreadsheet's padding)."""
    return draw(SPACE) + draw(inner) + draw(SPACE)


@st.composite
def mostly(draw, plain, odd, share: float = 0.85):
    """``plain`` in ``share`` of the draws, else ``odd``: a file whose every cell may be odd is
    almost never accepted, and the accepted path must be exercised as much as the refusals."""
    return draw(plain if draw(st.floats(0, 1)) < share else odd)


def ids() -> st.SearchStrategy[str]:
    """Person ids: digits with and without leading zeros, other text, empty."""
    return mostly(st.integers(0, 10**6).map(str),
                  st.one_of(st.integers(0, 999).map(str), st.integers(0, 999).map(lambda i: f"{i:06d}"),
                            padded(st.integers(0, 99).map(str)), ODD_TEXT))


def ages() -> st.SearchStrategy[str]:
    return mostly(st.integers(0, 99).map(str),
                  st.one_of(st.integers(-5, 200).map(str), st.integers(0, 99).map(lambda a: f"{a}.0"),
                            padded(st.integers(0, 99).map(str)),
                            st.sampled_from(["35.5", "", "abc", "\u00b2", "\u0663", "1e2", "-0", "+40",
                                             "99999999999999999999999"]),
                            ODD_TEXT))


def genders() -> st.SearchStrategy[str]:
    return mostly(st.sampled_from(["male", "female"]),
                  st.one_of(padded(st.sampled_from(["male", "female", "Male", "FEMALE"])),
                            st.sampled_from(["m", "", "unknown", "m\u00e4nnlich"]), ODD_TEXT))


EXTRA_COLUMNS = st.lists(st.sampled_from(["note", "Unnamed: 0", "source", "extra col"]), max_size=2, unique=True)


@st.composite
def layout(draw, required: tuple[str, ...]) -> dict:
    """How the file is written: the header (a required column dropped or padded, extras, any
    order), BOM, line ends and quoting."""
    cols = list(required) + draw(EXTRA_COLUMNS)
    dropped = draw(st.one_of(st.none(), st.sampled_from(required))) if draw(st.integers(0, 9)) == 0 else None
    if dropped:
        cols.remove(dropped)
    twin = None
    if draw(st.integers(0, 14)) == 0:    # a required column twice: "age" and "age " (the same once stripped)
        twin = draw(st.sampled_from([c for c in required if c != dropped]))
        cols.append(twin + " ")
    cols = draw(st.permutations(cols))
    names = {c: (draw(SPACE) + c + draw(SPACE) if c in required and draw(st.booleans()) else c) for c in cols}
    return {"columns": cols, "names": names, "dropped": dropped, "twin": twin, "bom": draw(st.booleans()),
            "crlf": draw(st.booleans()), "quote_all": draw(st.booleans())}


def render(lay: dict, rows: list[dict]) -> bytes:
    """The CSV bytes of ``rows`` (dicts by column) written with ``lay``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if lay["crlf"] else "\n",
                   quoting=csv.QUOTE_ALL if lay["quote_all"] else csv.QUOTE_MINIMAL)
    w.writerow([lay["names"][c] for c in lay["columns"]])
    for r in rows:
        w.writerow([r.get(c, "") for c in lay["columns"]])
    return (("\ufeff" if lay["bom"] else "") + buf.getvalue()).encode()


def header_broken(lay: dict) -> bool:
    """The header alone refuses the file: a required column missing or given twice."""
    return bool(lay["dropped"] or lay["twin"])


def problem_lines(problems: list[str]) -> set[int]:
    """The lines a DataError's problems name ("FILE line N: ...")."""
    return {int(m.group(1)) for p in problems for m in [re.search(r" line (\d+): ", p)] if m}
