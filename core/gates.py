"""Test gates: hold one chosen point of a run (a batch, an epoch, a checkpoint half written)
until a fault test has killed what it wants there, so the fault lands at that point however fast
the machine is (a watcher polling for "the right moment" misses it on a fast machine).

Off unless $ORCHESTRATOR_TEST_GATES names a folder; only tests set it. A test arms a gate by
writing ``<folder>/<point>.hold``: JSON of the values the point must match (``{"epoch": 1}``;
``{}`` matches every arrival; ``"holders": n`` holds the first n arrivals, default 1). Each
held process writes ``<point>.reached.<k>`` (its pid and the point's values) and waits while
the hold file exists; later arrivals pass. The test kills the holder (its process, node or
driver), then removes the hold file. Every matching arrival, held or not, is also appended to
``<point>.arrivals`` (where a retry ran, say).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .atomic import write_text_atomic

ENV = "ORCHESTRATOR_TEST_GATES"
MAX_HOLD_S = 900.0   # a gate a crashed test left armed must not hang a run for ever


def hold(point: str, **where) -> None:
    """Wait here while the test's gate for ``point`` holds and ``where`` matches it."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    gate = Path(folder) / f"{point}.hold"
    try:
        want = json.loads(gate.read_text() or "{}")
    except (OSError, ValueError):
        return
    holders = int(want.pop("holders", 1))
    if any(str(where.get(k)) != str(v) for k, v in want.items()):
        return
    with open(Path(folder) / f"{point}.arrivals", "a") as log:   # every match, held or not: one line
        log.write(json.dumps({"pid": os.getpid(), **where}, default=str) + "\n")
    for k in range(holders):   # claim a free holder slot: creating its file is atomic
        try:
            os.close(os.open(Path(folder) / f"{point}.claimed.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            continue
    else:
        return
    write_text_atomic(json.dumps({"pid": os.getpid(), **where}, default=str), Path(folder) / f"{point}.reached.{k}")
    end = time.time() + MAX_HOLD_S
    while gate.exists() and time.time() < end:
        time.sleep(0.05)
