"""The test side of core/failpoints.py: arm a gate that holds a run at one named point (an epoch,
a batch, a checkpoint half written), wait until the run is held there, strike (kill a process, a
node, a driver, stop a server), release; or arm a point to crash the first process that reaches
it. Used by the fault tests here and in tests/cluster."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.atomic import write_text_atomic   # the workers must never read half a gate
from core.failpoints import ENV


def gates_folder() -> Path:
    """The fail points' folder (core/failpoints.py), in the environment before any node starts:
    Ray workers inherit it from their raylet, CLI drivers from the test."""
    if not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix="gates-")
        atexit.register(shutil.rmtree, os.environ[ENV], ignore_errors=True)
    return Path(os.environ[ENV])


@dataclass
class Struck:
    """What ``Gate.kill_driver`` did: the holders, what ``before()`` saw, the driver's output
    and when (time.time()) it was killed."""
    held: list[dict]
    seen: object
    output: str
    at: float


class Gate:
    """Hold a run at one point (core/failpoints.py) until the test has done its damage there:
    ``with Gate("epoch", epoch=1) as g: ... info = g.wait()`` (pid, node, ... of the holder)."""

    def __init__(self, point: str, holders: int = 1, **where):
        self.folder, self.point, self.holders, self.where = gates_folder(), point, holders, where
        self.closed = False

    def __enter__(self) -> "Gate":
        for old in self.folder.glob(f"{self.point}.*"):
            old.unlink()
        write_text_atomic(json.dumps({**self.where, "holders": self.holders}), self.folder / f"{self.point}.hold")
        return self

    def arrivals(self) -> list[dict]:
        """Every process that matched the gate so far, held or passed, in order."""
        f = self.folder / f"{self.point}.arrivals"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []

    def reached(self) -> list[dict]:
        out = []
        for p in sorted(self.folder.glob(f"{self.point}.reached.*")):
            out.append(json.loads(p.read_text()))
        return out

    def wait(self, also=lambda: True, timeout: float = 600, proc: subprocess.Popen | None = None) -> list[dict]:
        """The holders, once all of them are held and ``also()`` holds. The timeout only ends a
        broken test: a held run waits for the test however slow the machine is. ``proc``: the
        driver under test, which must not end before its gate."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.reached()
            if len(got) >= self.holders and also():
                return got
            if self.closed:
                raise AssertionError(f"the {self.point} gate {self.where} was closed before it was reached")
            if proc is not None and proc.poll() is not None:
                out = "".join(s or "" for s in proc.communicate())
                raise AssertionError(f"the driver ended (exit {proc.returncode}) before the {self.point} gate "
                                     f"{self.where}:\n{out[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"the {self.point} gate {self.where} was not reached ({self.reached()}) in {timeout} s")

    def kill_driver(self, proc: subprocess.Popen, also=lambda: True, before=lambda: None) -> "Struck":
        """SIGKILL ``proc`` (a CLI driver, as the OOM killer kills: no handler runs) once its run is
        held here and ``also()`` holds; ``before()`` looks at what must be seen just before the
        kill. The driver never outlives the test, whatever fails on the way."""
        try:
            held = self.wait(also=also, proc=proc)
            seen = before()
            proc.kill()
            at = time.time()
            out = "".join(s or "" for s in proc.communicate(timeout=60))
        finally:
            if proc.poll() is None:
                proc.kill()
        return Struck(held, seen, out, at)

    def then(self, action, also=lambda: True) -> threading.Thread:
        """In a thread: wait, then ``action(holders)`` (the test's fault), while the run is held."""
        t = threading.Thread(target=lambda: action(self.wait(also)), daemon=True)
        t.start()
        return t

    def release(self) -> None:
        (self.folder / f"{self.point}.hold").unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.closed = True   # a waiting `then` thread gives up
        self.release()


class Crash:
    """The first process that reaches ``point`` (where ``where`` matches) dies there, once:
    ``how="exit"`` as a crashed worker (os._exit), ``"kill"`` by SIGKILL. ``with Crash("epoch",
    epoch=1) as c: ... c.crashed()`` (its pid and the point's values, or None)."""

    def __init__(self, point: str, how: str = "exit", **where):
        self.folder, self.point, self.armed = gates_folder(), point, {**where, "how": how}

    def __enter__(self) -> "Crash":
        (self.folder / f"{self.point}.crashed").unlink(missing_ok=True)
        write_text_atomic(json.dumps(self.armed), self.folder / f"{self.point}.crash")
        return self

    def crashed(self) -> dict | None:
        f = self.folder / f"{self.point}.crashed"
        return json.loads(f.read_text()) if f.exists() and f.read_text() else None

    def __exit__(self, *exc) -> None:
        (self.folder / f"{self.point}.crash").unlink(missing_ok=True)


def wait_gone(pids, timeout: float = 120) -> None:
    """Until none of ``pids`` runs (a killed driver's workers exit once Ray notices)."""
    deadline = time.time() + timeout
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.time() < deadline:
        time.sleep(0.1)
