"""core/failpoints.py: inert unless armed by name; a crash point kills the first matching process
once; a hold point keeps the process there until the test releases it."""
import multiprocessing
import threading

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
