"""How long `python -m orchestrator [COMMAND] --help` takes, and which heavy stacks it imports.

Each call is a fresh interpreter, as a user starts it; the figure is the median wall time of
--repeat calls. ``--compare DIR`` times another checkout (an older commit, say) side by side,
its calls alternating with this checkout's so that both see the same load:

    git clone -q . ../before && git -C ../before checkout -q COMMIT
    python benchmarks/cli_help.py --compare ../before
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "sklearn", "matplotlib", "pandas", "ray", "numpy")
# runs the CLI's --help in this interpreter, then names the heavy stacks it imported
PROBE = ("import runpy, sys\nsys.argv = ['orchestrator', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('orchestrator', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules))")


def help_call(checkout: Path, command: str) -> tuple[float, str]:
    """(wall seconds, heavy stacks imported) of one `--help` in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(checkout), RAY_USAGE_STATS_ENABLED="0")
    argv = [sys.executable, "-c", PROBE, *([command] if command else []), "--help"]
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    return wall, out.rsplit("HEAVY ", 1)[-1].strip() or "none"


def measure(checkouts: list[Path], commands: list[str], repeat: int) -> list[list[dict]]:
    """Per checkout, a row per command; the checkouts' calls alternate, so both see the same load."""
    rows = [[] for _ in checkouts]
    for command in commands:
        calls = [[help_call(c, command) for c in checkouts] for _ in range(repeat)]
        for i, _ in enumerate(checkouts):
            rows[i].append({"command": f"{command} --help".strip(), "imports": calls[-1][i][1],
                            "median_s": round(statistics.median(c[i][0] for c in calls), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", default=",tune,run,ensemble,preprocess", help="comma-separated; '' is the top level")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compare", type=Path, default=None, help="another checkout to time the same way")
    ap.add_argument("--smoke", action="store_true", help="one call each of the top level and tune (CI)")
    a = ap.parse_args()
    commands, repeat = (["", "tune"], 1) if a.smoke else (a.commands.split(","), a.repeat)
    now, before = (measure([ROOT, a.compare.resolve()], commands, repeat) if a.compare
                   else (measure([ROOT], commands, repeat)[0], None))
    print("| command | this checkout (s) | imports |" + (" compared (s) | imports |" if before else ""))
    print("| --- | --- | --- |" + (" --- | --- |" if before else ""))
    for i, row in enumerate(now):
        extra = f" {before[i]['median_s']} | {before[i]['imports']} |" if before else ""
        print(f"| `{row['command']}` | {row['median_s']} | {row['imports']} |{extra}")
    print(json.dumps({"repeat": repeat, "now": now, "compared": before}))


if __name__ == "__main__":
    main()
