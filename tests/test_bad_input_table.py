"""benchmarks/bad_input_table.py: the records the bad-input tests leave become the README's table."""
import subprocess
import sys

from tests.bad_input import COUNTS, RECORD_FILE, attempt, write_records
from conftest import ROOT


def test_records_add_up_and_a_traceback_fails_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.bad_input.COUNTS", type(COUNTS)(COUNTS.default_factory))
    from tests import bad_input
    attempt("kind a", lambda: 1, refusals=(ValueError,))
    attempt("kind a", lambda: int("x"), refusals=(ValueError,))
    write_records(tmp_path)
    write_records(tmp_path)   # a sweep in two parts adds up
    assert bad_input.COUNTS["kind a"]["accepted"] == 1
    script = [sys.executable, str(ROOT / "benchmarks" / "bad_input_table.py"), "--records", str(tmp_path)]
    out = subprocess.run(script, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "| kind a | 4 | 2 | 0 | 2 | 0 | 0 |" in out.stdout and "| **all** | 4 |" in out.stdout
    (tmp_path / RECORD_FILE).write_text('{"kind b": {"accepted": 1, "traceback": 1}}')
    assert subprocess.run(script, capture_output=True, cwd=ROOT).returncode == 1
