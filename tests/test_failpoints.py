"""core/failpoints.py: inert unless armed by name; a crash point kills the first matching process
once; a hold point keeps the process there until the test releases it."""
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from core import failpoints
from core.failpoints import ENV, failpoint
from fault_gate import Crash, Gate


def reach(point: str, **where) -> int:
    """The exit code of a fresh process that reaches ``point`` with ``where`` (0: it went on)."""
    p = multiprocessing.get_context("fork").Process(target=failpoint, args=(point,), kwargs=where)
    p.start()
    p.join(20)   # a hang guard only: a process reaches its point in milliseconds
    return p.exitcode


def test_a_point_is_inert_without_the_folder_or_an_armed_file(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    assert reach("epoch", epoch=1) == 0
    monkeypatch.setenv(ENV, str(tmp_path))
    assert reach("epoch", epoch=1) == 0 and not list(tmp_path.iterdir())   # nothing armed, nothing written


def test_a_crash_point_ends_the_first_matching_process_once(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, str(tmp_path))
    with Crash("epoch", epoch=1, phase="cv") as crash:
        codes = [reach("epoch", epoch=e, phase=p) for e, p in ((0, "cv"), (1, "search"), (1, "cv"), (1, "cv"))]
        assert codes == [0, 0, 1, 0] and crash.crashed()["epoch"] == 1   # the retry goes on
    with Crash("detect_batch", how="kill") as crash:
        assert reach("detect_batch", first="a.jpg") == -9 and crash.crashed()["first"] == "a.jpg"
    assert reach("detect_batch", first="b.jpg") == 0                    # disarmed on leaving


def test_a_hold_point_waits_for_the_test_and_lets_later_arrivals_pass(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, str(tmp_path))
    with Gate("checkpoint", written=1) as gate:
        held = threading.Thread(target=failpoint, args=("checkpoint",), kwargs={"written": 1, "epoch": 2}, daemon=True)
        held.start()
        [who] = gate.wait(timeout=20)
        assert who["epoch"] == 2 and held.is_alive()                 # held there ...
        assert reach("checkpoint", written=1, epoch=3) == 0         # ... while a later arrival passes
        gate.release()
        held.join(20)
        assert not held.is_alive()
    assert [a["epoch"] for a in gate.arrivals()] == [2, 3]


# --- the points' rules in this process: the exits are recorded instead of taken ---


class Left(Exception):
    """What the patched os._exit / os.kill raise: the test process stays."""


@pytest.fixture
def exits(monkeypatch):
    taken = []

    def leave(*args):
        taken.append(args)
        raise Left

    monkeypatch.setattr(failpoints.os, "_exit", leave)
    monkeypatch.setattr(failpoints.os, "kill", leave)
    return taken


def test_an_arming_file_matches_by_the_values_it_names_as_text(tmp_path):
    """'holders' and 'how' are settings, not values to match; a value is compared as text; an
    empty file matches every arrival; a missing or unreadable file arms nothing."""
    f = tmp_path / "epoch.hold"
    assert failpoints._armed(f, {"epoch": 1}) is None
    f.write_text("")
    assert failpoints._armed(f, {"epoch": 1}) == {}
    f.write_text("{not json")
    assert failpoints._armed(f, {}) is None
    f.write_text(json.dumps({"epoch": 1, "phase": "cv", "holders": 2, "how": "kill"}))
    assert failpoints._armed(f, {"epoch": "1", "phase": "cv", "fold": 3}) == {"epoch": 1, "phase": "cv",
                                                                              "holders": 2, "how": "kill"}
    assert failpoints._armed(f, {"epoch": 2, "phase": "cv"}) is None
    assert failpoints._armed(f, {"epoch": 1}) is None   # a named value the arrival lacks: no match


def test_a_claim_is_won_once(tmp_path):
    assert failpoints._claim(tmp_path / "x") is True and (tmp_path / "x").is_file()
    assert failpoints._claim(tmp_path / "x") is False


def test_a_crash_point_records_the_crasher_and_exits_or_kills_once(tmp_path, exits):
    (tmp_path / "epoch.crash").write_text(json.dumps({"epoch": 1}))
    failpoints._crash(tmp_path, "epoch", {"epoch": 2})   # not the armed values: goes on
    assert exits == [] and not (tmp_path / "epoch.crashed").exists()
    with pytest.raises(Left):
        failpoints._crash(tmp_path, "epoch", {"epoch": 1, "trial": Path("t1")})   # any value, as text
    assert exits == [(1,)]
    assert json.loads((tmp_path / "epoch.crashed").read_text()) == {"pid": os.getpid(), "epoch": 1, "trial": "t1"}
    failpoints._crash(tmp_path, "epoch", {"epoch": 1})   # once: the retry goes on
    assert exits == [(1,)]
    (tmp_path / "batch.crash").write_text(json.dumps({"how": "kill"}))
    with pytest.raises(Left):
        failpoints._crash(tmp_path, "batch", {})
    assert exits[1] == (os.getpid(), signal.SIGKILL)


def test_the_documented_variable_arms_the_points(tmp_path, monkeypatch, exits):
    """$ORCHESTRATOR_FAILPOINTS names the folder; a crash is taken before a hold."""
    monkeypatch.setenv("ORCHESTRATOR_FAILPOINTS", str(tmp_path))
    (tmp_path / "epoch.hold").write_text("{}")
    (tmp_path / "epoch.crash").write_text("{}")
    with pytest.raises(Left):
        failpoints.failpoint("epoch", epoch=3)
    assert json.loads((tmp_path / "epoch.crashed").read_text())["epoch"] == 3
    assert not (tmp_path / "epoch.arrivals").exists()


def test_a_hold_waits_until_its_deadline_and_records_holder_and_arrivals(tmp_path, monkeypatch):
    """the first ``holders`` arrivals are held (each writes reached.K), later ones pass; every
    matching arrival is a line of .arrivals; a point left armed gives up at MAX_HOLD_S."""
    monkeypatch.setattr(failpoints, "MAX_HOLD_S", 0.3)
    (tmp_path / "ckpt.hold").write_text(json.dumps({"holders": 2, "written": 1}))
    failpoints._hold(tmp_path, "ckpt", {"written": 0})   # no match: no record
    assert not (tmp_path / "ckpt.arrivals").exists()
    times = []
    for epoch in (1, 2, 3):
        t0 = time.monotonic()
        failpoints._hold(tmp_path, "ckpt", {"written": 1, "epoch": epoch, "at": Path("w")})   # any value, as text
        times.append(time.monotonic() - t0)
    assert all(0.3 <= t < 1.0 for t in times[:2]) and times[2] < 0.2
    assert [json.loads((tmp_path / f"ckpt.reached.{k}").read_text()) for k in (0, 1)] == [
        {"pid": os.getpid(), "written": 1, "epoch": 1, "at": "w"}, {"pid": os.getpid(), "written": 1, "epoch": 2, "at": "w"}]
    assert not (tmp_path / "ckpt.reached.2").exists()
    assert [json.loads(line)["epoch"] for line in (tmp_path / "ckpt.arrivals").read_text().splitlines()] == [1, 2, 3]


def test_a_hold_ends_when_the_test_removes_the_gate(tmp_path):
    gate = tmp_path / "epoch.hold"
    gate.write_text("{}")
    threading.Timer(0.2, gate.unlink).start()
    t0 = time.monotonic()
    failpoints._hold(tmp_path, "epoch", {"epoch": 1})
    assert 0.2 <= time.monotonic() - t0 < 1.0
