"""Named fail points: every fault hook of the code in one place (as etcd's gofail, FreeBSD's
fail(9)). Production code only calls ``failpoint("name", **where)`` at the points a fault test
needs; each call is inert unless $ORCHESTRATOR_FAILPOINTS names a folder (only tests set it)
and a file there arms that point by name:

- ``<name>.hold``: hold the process here until the test has done its damage (killed a process,
  a node, a driver, stopped a server), so the fault lands at that point however fast the
  machine is. JSON of the values the point must match (``{"epoch": 1}``; ``{}`` matches every
  arrival; ``"holders": n`` holds the first n arrivals, default 1). Each held process writes
  ``<name>.reached.<k>`` (its pid and the point's values) and waits while the hold file exists;
  later arrivals pass. Every matching arrival, held or not, is appended to ``<name>.arrivals``.
- ``<name>.crash``: the first matching arrival dies here, once: ``{"how": "exit", ...}`` leaves
  with ``os._exit(1)`` (a crashed worker), ``"kill"`` SIGKILLs itself (the OOM killer: no
  handler runs). It writes ``<name>.crashed`` (its pid and values) first.

The points: ``epoch`` (a trial, before each epoch, after the last checkpoint), ``checkpoint``
(a trial's checkpoint half written) and ``detect_batch`` (a preprocess batch half done).
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from .atomic import write_text_atomic

ENV = "ORCHESTRATOR_FAILPOINTS"
MAX_HOLD_S = 900.0   # a point a crashed test left armed must not hang a run for ever


def failpoint(name: str, **where) -> None:
    """Crash or wait here where a test armed ``name`` for these ``where`` values; else nothing."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    _crash(Path(folder), name, where)
    _hold(Path(folder), name, where)


def _armed(file: Path, where: dict) -> dict | None:
    """The arming file's JSON where it exists and every value it names matches ``where``."""
    try:
        want = json.loads(file.read_text() or "{}")
    except (OSError, ValueError):
        return None
    keys = {k: v for k, v in want.items() if k not in ("holders", "how")}
    return want if all(str(where.get(k)) == str(v) for k, v in keys.items()) else None


def _claim(file: Path) -> bool:
    """Creating the file is atomic: exactly one process wins it."""
    try:
        os.close(os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _crash(folder: Path, name: str, where: dict) -> None:
    want = _armed(folder / f"{name}.crash", where)
    if want is None or not _claim(folder / f"{name}.crashed"):
        return
    write_text_atomic(json.dumps({"pid": os.getpid(), **where}, default=str), folder / f"{name}.crashed")
    if want.get("how") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)


def _hold(folder: Path, name: str, where: dict) -> None:
    gate = folder / f"{name}.hold"
    want = _armed(gate, where)
    if want is None:
        return
    with open(folder / f"{name}.arrivals", "a") as log:   # every match, held or not: one line
        log.write(json.dumps({"pid": os.getpid(), **where}, default=str) + "\n")
    slot = next((k for k in range(int(want.get("holders", 1))) if _claim(folder / f"{name}.claimed.{k}")), None)
    if slot is None:
        return
    write_text_atomic(json.dumps({"pid": os.getpid(), **where}, default=str), folder / f"{name}.reached.{slot}")
    end = time.time() + MAX_HOLD_S
    while gate.exists() and time.time() < end:
        time.sleep(0.05)
