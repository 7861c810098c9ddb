"""The ledger of a `run` in progress, so a rerun after a hard kill (SIGKILL, the OOM killer: no
handler runs) knows what the killed run left behind.

While `run` works it rewrites ``results/run-<study>.json`` every few seconds with the seconds it
has used, and removes it when it has finished; it holds ``results/run-<study>.lock`` meanwhile, so
two runs started at once cannot both proceed. A run on this host is live while its process is; a
run on another host while its ledger is younger than REMOTE_DEAD_S. A rerun that finds the ledger of a dead run
therefore knows that run stopped unfinished, and
  - counts the seconds it used against ``--budget`` (the budget is the whole chain's, however
    many times it is started), or says that nothing is left;
  - marks the MLflow runs it left RUNNING as KILLED (a resumed trial reopens its own run, so
    nothing still to be trained loses its run; the rest would show as live for ever).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from core.atomic import write_text_atomic
from core.errors import DataError
from core.workspace import Workspace

from .budget import BudgetTooSmall, Clock

HEARTBEAT_S = 5.0   # a killed run's count is at most this much short
REMOTE_DEAD_S = 6 * HEARTBEAT_S   # a run on another host is dead once its ledger is this much older
#                                   than its heartbeat (room for a slow NFS write and clock skew)


def _alive(rec: dict, path: Path) -> bool:
    """The ledger's writer still runs: on this host, its process (same pid, same process start);
    on another host, whose processes cannot be seen, its heartbeat is recent. A run that wrote
    that it stopped (failed or interrupted) is not live, though its process may be."""
    if rec.get("stopped"):
        return False
    if rec.get("host") != socket.gethostname():
        try:
            return time.time() - path.stat().st_mtime < REMOTE_DEAD_S
        except FileNotFoundError:   # it finished meanwhile
            return False
    return bool(rec.get("proc_start")) and _proc_start(rec.get("pid", "")) == rec["proc_start"]


@contextmanager
def _claimed(path: Path, study: str, ws: Workspace):
    """Holds an exclusive lock beside the ledger while the run works, so two runs that start at
    once cannot both find no ledger and proceed; the system drops the lock when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"another `run` is working on study {study!r} in {ws.root} (it holds "
                            f"{path.with_suffix('.lock')}); wait for it, or use --study NEW_NAME") from None
        yield


def _proc_start(pid="self") -> str:
    """When the process started (clock ticks since boot): a reused pid has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def close_stale_runs(uri: str, studies: list[str]) -> int:
    """Mark the RUNNING MLflow runs (trials and study parents) of ``studies`` KILLED."""
    from mlflow.tracking import MlflowClient  # heavy: only a rerun after a killed run closes its runs

    from results.tracking import find_runs  # (pandas), as mlflow
    client, closed = MlflowClient(uri), 0
    for study in studies:
        for role in ("trial", "study"):
            runs = find_runs(uri, study=study, role=role)
            for run_id in runs.loc[runs["status"] == "RUNNING", "run_id"] if not runs.empty else []:
                client.set_terminated(run_id, "KILLED")
                closed += 1
    return closed


@contextmanager
def run_ledger(ws: Workspace, study: str, budget_s: float | None, uri: str, studies: list[str]):
    """Yields the run's Clock: over ``budget_s``, less what killed earlier runs used."""
    path = Path(ws.results) / f"run-{study}.json"
    with _claimed(path, study, ws):
        with _ledger(path, ws, study, budget_s, uri, studies) as clock:
            yield clock


@contextmanager
def _ledger(path: Path, ws: Workspace, study: str, budget_s: float | None, uri: str, studies: list[str]):
    used, old = 0.0, None
    if path.is_file():
        old = json.loads(path.read_text())
        if _alive(old, path):
            raise DataError(f"another `run` (pid {old['pid']}) on host {old.get('host')} is working on study "
                            f"{study!r} in {ws.root}; wait for it, or use --study NEW_NAME (a run stopped "
                            f"on another host counts as stopped {REMOTE_DEAD_S:.0f} s after its last heartbeat)")
        used = float(old.get("used_s", 0.0))
        # the killed run's studies too: `run --head-backbone gender=B` killed, then a plain `run`,
        # leaves run-gender's trials RUNNING where this run trains none
        closed = close_stale_runs(uri, list(dict.fromkeys([*old.get("studies", []), *studies])))
        print(f"run: the last run of study {study!r} stopped unfinished after {used:.0f} s (killed, failed or interrupted): its finished "
              f"trials are reused; {closed} MLflow run(s) it left RUNNING are now KILLED")
        if budget_s is not None:
            if budget_s - used <= 0:
                raise DataError(f"budget: the stopped run(s) of study {study!r} used {used:.0f} s, all of the "
                                f"{budget_s:.0f} s budget; --budget counts them too: raise --budget, or use --study NEW_NAME")
            print(f"budget: {used:.0f} s of the {budget_s:.0f} s budget used by the stopped run: "
                  f"{budget_s - used:.0f} s left")
    clock = Clock(budget_s, started=time.time() - used)
    stop = threading.Event()
    me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(), "budget_s": budget_s,
          "studies": list(studies)}

    def beat():
        while True:
            write_text_atomic(json.dumps(me | {"used_s": round(clock.elapsed(), 1)}), path)
            if stop.wait(HEARTBEAT_S):
                return

    writer = threading.Thread(target=beat, daemon=True, name="run-ledger")
    writer.start()
    try:
        yield clock
    except BudgetTooSmall:   # refused before any trial started: the ledger is as it was
        stop.set()
        writer.join()
        if old is None:
            path.unlink()
        else:
            write_text_atomic(json.dumps(old), path)
        raise
    except BaseException as exc:   # failed or interrupted: its seconds stay counted, and the ledger
        stop.set()                 # says it stopped, so this process, still alive (a caller of
        writer.join()              # run_all that goes on), is not taken for a run still working
        write_text_atomic(json.dumps(me | {"used_s": round(clock.elapsed(), 1), "stopped": type(exc).__name__}), path)
        raise
    finally:
        stop.set()
        writer.join()
    path.unlink()   # done: only a run that did not finish (killed, failed, Ctrl-C) leaves its ledger
