"""The bad-input tests' referee: every generated input ends in exactly one outcome, counted per kind.

    outcome = attempt("train.csv", lambda: load_train(data), refusals=(DataError,), watch=[ws])

accepted: it returned and logged no warning; warned: it returned and logged one or more;
refused: it raised one of ``refusals`` (the error a user is shown); traceback: anything else
(re-raised, so the test fails); partial write: a refused input changed a file under ``watch``
(the test fails). The counts go to ``$BAD_INPUT_RECORD/bad_input.json`` at the end of the test
session (tests/conftest.py), which ``benchmarks/bad_input_table.py`` turns into a table.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

OUTCOMES = ("accepted", "warned", "refused", "traceback", "partial_write")
COUNTS: dict[str, Counter] = defaultdict(Counter)
RECORD_FILE = "bad_input.json"


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def snapshot(folders) -> dict[str, str]:
    """Every file under ``folders`` (path -> sha256 of its bytes)."""
    out = {}
    for folder in folders:
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file() and not f.is_symlink():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


class Outcome:
    def __init__(self, kind: str, result=None, error: BaseException | None = None, warnings=()):
        self.kind, self.result, self.error, self.warnings = kind, result, error, list(warnings)

    @property
    def name(self) -> str:
        if self.error is not None:
            return "refused"
        return "warned" if self.warnings else "accepted"


def attempt(kind: str, fn, *, refusals: tuple[type[BaseException], ...], watch=(), odd=lambda result: "") -> Outcome:
    """Run ``fn`` on one generated input and count its outcome under ``kind``. ``odd(result)``: a
    warning the result itself carries (an image's decoding note), counted as logged ones are."""
    before = snapshot(watch)
    handler = _Warnings()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.WARNING) if level else logging.WARNING)
    try:
        result = fn()
        out = Outcome(kind, result=result, warnings=handler.messages + [w for w in [odd(result)] if w])
    except refusals as exc:
        out = Outcome(kind, error=exc)
    except Exception:
        COUNTS[kind]["traceback"] += 1
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    if out.error is not None and snapshot(watch) != before:
        COUNTS[kind]["partial_write"] += 1
        raise AssertionError(f"{kind}: a refused input changed files under {list(map(str, watch))}")
    COUNTS[kind][out.name] += 1
    return out


def write_records(folder: Path) -> Path | None:
    """Add this test run's counts to ``folder/bad_input.json`` (a longer sweep may run in parts)."""
    if not COUNTS:
        return None
    path = Path(folder) / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else {}
    for kind, c in COUNTS.items():
        row = old.setdefault(kind, {o: 0 for o in OUTCOMES})
        for o in OUTCOMES:
            row[o] = row.get(o, 0) + c[o]
    path.write_text(json.dumps(old, indent=1, sort_keys=True))
    return path


def count(kind: str, outcome: str) -> None:
    """Count an outcome read from a stage's output (an image's manifest row) rather than a raise."""
    assert outcome in OUTCOMES, outcome
    COUNTS[kind][outcome] += 1
