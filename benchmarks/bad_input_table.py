"""Run the bad-input tests and print, per input kind, how every generated case ended.

    PYTHONPATH=. python benchmarks/bad_input_table.py             # the suite's bounded, seeded run (~1 min)
    PYTHONPATH=. python benchmarks/bad_input_table.py --long      # the long sweep: tens of thousands of cases
    PYTHONPATH=. python benchmarks/bad_input_table.py --smoke     # two cheap input kinds, seconds (the tests run it)
    PYTHONPATH=. python benchmarks/bad_input_table.py --records DIR   # the table of records a test run left in DIR

The tests (tests/test_bad_input.py: Hypothesis over every file a user hands the orchestrator;
tests/test_images_as_they_come.py and tests/test_damaged_workspace.py: images and damaged
workspaces) count each case's outcome (tests/bad_input.py) and leave the counts in
$BAD_INPUT_RECORD/bad_input.json; this turns them into the table in benchmarks/README.md
"Bad input". Exit status: pytest's, or 1 when a record counts a traceback or a partial write.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results.tables import markdown_table  # noqa: E402

TESTS = ("tests/test_bad_input.py", "tests/test_images_as_they_come.py", "tests/test_damaged_workspace.py")
SMOKE = ("tests/test_bad_input.py", "-k", "info_csv or corrections_record")
RECORD_FILE = "bad_input.json"
COLUMNS = {"accepted": "accepted", "warned": "warned", "refused": "refused",
           "traceback": "tracebacks", "partial_write": "partial writes"}


def table(records: dict[str, dict]) -> str:
    """One row per input kind (in the order the tests met them) and a total."""
    rows = [{"input kind": kind, "cases": sum(c.get(k, 0) for k in COLUMNS),
             **{name: c.get(k, 0) for k, name in COLUMNS.items()}} for kind, c in records.items()]
    df = pd.DataFrame(rows)
    total = {"input kind": "**all**", **{c: int(df[c].sum()) for c in df.columns if c != "input kind"}}
    return markdown_table(pd.concat([df, pd.DataFrame([total])], ignore_index=True))


def read_records(folder: Path) -> dict[str, dict]:
    path = Path(folder) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def clean(records: dict[str, dict]) -> bool:
    return all(c.get("traceback", 0) == 0 and c.get("partial_write", 0) == 0 for c in records.values())


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, help="a folder of records: print their table, run nothing")
    ap.add_argument("--long", action="store_true", help="Hypothesis profile 'long' (tests/conftest.py)")
    ap.add_argument("--smoke", action="store_true", help="only " + " ".join(SMOKE))
    a = ap.parse_args(argv)
    if a.records:
        recs = read_records(a.records)
        print(table(recs) if recs else f"no records in {a.records}")
        return 0 if recs and clean(recs) else 1
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, BAD_INPUT_RECORD=d, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0",
                   HYPOTHESIS_PROFILE="long" if a.long else "default")
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *(SMOKE if a.smoke else TESTS)], cwd=ROOT, env=env)
        recs = read_records(Path(d))
        print(f"\n{'long' if a.long else 'default'} profile, {time.time() - t0:.0f} s:\n")
        print(table(recs))
    return proc.returncode or (0 if clean(recs) else 1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
