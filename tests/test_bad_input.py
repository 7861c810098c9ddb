"""Generated bad input (Hypothesis) over every file a user hands the orchestrator.

Each generated file ends in exactly one outcome: accepted and loaded as the oracle says, a
warning, or one DataError whose problems name the file and exactly the lines the oracle expects;
never a traceback, never a partial write (tests/bad_input.py counts them per kind). The default
profile (tests/conftest.py) is seeded and bounded; `--hypothesis-profile long` is the sweep
whose counts are in benchmarks/README.md. Every bug they found is kept as an @example.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from core.dataset import EVAL_COLUMNS, MAX_AGE, TRAIN_COLUMNS, load_eval, load_train
from core.errors import DataError
from core.labels import GENDERS, IMAGE_KINDS
from tests.bad_input import attempt
from tests.csv_cases import ODD_TEXT, ages, genders, header_broken, ids, layout, problem_lines, render

ALL_KINDS = tuple(IMAGE_KINDS)
EXTS = (".jpg", ".JPG", ".jpeg", ".png")
PATHS = ("ok", "dot", "slash", "dotdot", "absolute", "link_out", "missing", "empty", "shared")
OUT_OF_DATA = ("dotdot", "absolute", "link_out")


def _age_ok(text: str) -> int | None:
    t = text.strip()
    if not re.fullmatch(r"[0-9]+(\.0*)?", t, flags=re.ASCII) or int(t.split(".")[0]) > MAX_AGE:
        return None
    return int(t.split(".")[0])


def _outside(tmp: Path) -> Path:
    """A folder beside DATA holding a whole person: a path that leads there must not be read."""
    out = tmp / "outside"
    out.mkdir()
    for k in ALL_KINDS:
        (out / f"{k}.jpg").write_bytes(b"")
    return out


@st.composite
def persons(draw) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(0, 4) if draw(st.integers(0, 19)) == 0 else st.integers(1, 4))):
        kinds = draw(st.one_of(st.just(ALL_KINDS), st.lists(st.sampled_from(ALL_KINDS), unique=True)))
        how = draw(st.one_of(st.just("ok"), st.sampled_from(PATHS)))
        if how == "shared" and not (rows and rows[0]["how"] in ("ok", "dot", "slash")):
            how = "ok"   # "shared": the folder row 0 holds already
        rows.append({"id": draw(ids()), "gender": draw(genders()), "age": draw(ages()), "race": draw(ODD_TEXT),
                     "how": how,
                     "kinds": {k: draw(st.sampled_from(EXTS)) for k in kinds},
                     "extra": draw(st.sampled_from(["", "", "", "stray", "twin", "hidden", "link"]))})
    return rows


def _write_person(root: Path, i: int, p: dict, outside: Path) -> str:
    """Lay out person ``i``'s folder p{i} under train/images; returns its path cell."""
    folder = root / f"p{i}"
    folder.mkdir(parents=True)
    for k, ext in p["kinds"].items():
        (folder / f"{k}{ext}").write_bytes(b"")
    twin = "mask1.jpeg" if p["kinds"].get("mask1") != ".jpeg" else "mask1.png"   # mask1 a second time
    extra = {"stray": "notes.txt", "twin": twin, "hidden": "._mask1.jpg"}.get(p["extra"])
    if extra and (p["extra"] != "twin" or "mask1" in p["kinds"]):
        (folder / extra).write_bytes(b"")
    if p["extra"] == "link":
        os.symlink(outside / "normal.jpg", folder / "link.jpg")
    if p["how"] == "link_out":
        os.symlink(outside, root / f"link{i}")
    return {"ok": f"p{i}", "dot": f"./p{i}", "slash": f"p{i}/", "dotdot": "../../../outside",
            "absolute": str(outside), "link_out": f"link{i}", "missing": f"missing{i}", "empty": "",
            "shared": "p0"}[p["how"]]


def _expect(people: list[dict]) -> tuple[set[int], bool]:
    """(lines with a problem, whether a warning is due) as the data contract says."""
    bad, warn, seen = set(), False, set()
    for i, p in enumerate(people):
        line, pid = i + 2, p["id"].strip()
        if not pid or pid in seen or p["gender"].strip().lower() not in GENDERS or _age_ok(p["age"]) is None:
            bad.add(line)
        seen.add(pid)
        twin = p["extra"] == "twin" and "mask1" in p["kinds"]
        if p["how"] in OUT_OF_DATA + ("missing", "empty", "shared") or not p["kinds"] or twin or p["extra"] == "link":
            bad.add(line)
        warn |= 0 < len(p["kinds"]) < len(ALL_KINDS) or p["extra"] == "stray" or "." in p["age"].strip()
    return bad, warn


def _check_loaded(table, people: list[dict]) -> None:
    assert len(table) == sum(len(p["kinds"]) for p in people)
    for i, p in enumerate(people):
        rows = table[table["path"].str.startswith(f"train/images/p{i}/")]
        assert set(rows["person"]) == {p["id"].strip()}
        assert set(rows["path"]) == {f"train/images/p{i}/{k}{ext}" for k, ext in p["kinds"].items()}
        assert set(rows["gender"]) == {GENDERS[p["gender"].strip().lower()]}
        assert set(rows["age"]) == {_age_ok(p["age"])}
        assert {IMAGE_KINDS[k] for k in rows["kind"]} == set(rows["mask"])


@given(people=persons(), lay=layout(TRAIN_COLUMNS))
@example(   # a path out of DATA was read without a word
    people=[{"id": "1", "gender": "male", "age": "30", "race": "", "how": "dotdot", "kinds": {"mask1": ".jpg"},
             "extra": ""}],
    lay={"columns": list(TRAIN_COLUMNS), "names": {c: c for c in TRAIN_COLUMNS}, "dropped": None, "twin": None,
         "bom": False, "crlf": False, "quote_all": False})
@example(   # an age of '²' passed str.isdigit() and crashed int(); a 23-digit age overflowed int64
    people=[{"id": "1", "gender": "male", "age": "\u00b2", "race": "", "how": "ok", "kinds": {"mask1": ".jpg"},
             "extra": ""},
            {"id": "2", "gender": "male", "age": "99999999999999999999999", "race": "", "how": "ok",
             "kinds": {"mask1": ".jpg"}, "extra": ""}],
    lay={"columns": list(TRAIN_COLUMNS), "names": {c: c for c in TRAIN_COLUMNS}, "dropped": None, "twin": None,
         "bom": False, "crlf": False, "quote_all": False})
@example(people=[], lay={"columns": list(TRAIN_COLUMNS), "names": {c: c for c in TRAIN_COLUMNS},   # header only
                         "dropped": None, "twin": None, "bom": True, "crlf": True, "quote_all": True})
def test_train_csv(people, lay):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, outside = tmp / "data", _outside(tmp)
        root = data / "train" / "images"
        root.mkdir(parents=True)
        cells = [dict(p, path=_write_person(root, i, p, outside)) for i, p in enumerate(people)]
        csv_path = data / "train" / "train.csv"
        csv_path.write_bytes(render(lay, cells))
        out = attempt("train.csv", lambda: load_train(data), refusals=(DataError,), watch=[data])
        bad, warn = _expect(people)
        if header_broken(lay) or not people:
            assert out.name == "refused" and str(csv_path) in str(out.error), out.error
            return
        if bad:
            assert out.name == "refused", out.result
            assert problem_lines(out.error.problems) == bad, out.error
            assert all(p.startswith(str(csv_path)) for p in out.error.problems), out.error
            return
        assert out.name == ("warned" if warn else "accepted"), (out.error, out.warnings)
        _check_loaded(out.result, people)
