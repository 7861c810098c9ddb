"""Run the simulated-cluster fault tests and print what was killed, when, and what survived.

    PYTHONPATH=. python benchmarks/faults_table.py        # ~10-15 min on 2 cores
    PYTHONPATH=. python benchmarks/faults_table.py --smoke    # one fault, preprocessing's node loss (the tests run it)
    PYTHONPATH=. python benchmarks/faults_table.py --records DIR   # the table of records a test run left in DIR

The tests (tests/cluster/test_multinode_*.py) start real multi-node Ray clusters and a real
`mlflow server` on 127.0.0.1; with $FAULTS_RECORD set each fault test leaves a JSON record,
turned here into the table in benchmarks/README.md "Faults on a simulated cluster".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results.tables import markdown_table  # noqa: E402

ROWS = {   # record name: (fault, what was killed and when, what must survive)
    "preprocess_node_loss": ("worker node lost during preprocessing",
                             "the worker node's raylet and workers (SIGKILL), its first batch held half-way by a gate",
                             "every image exactly once, whole crops; a rerun finds all cached"),
    "preprocess_driver_killed": ("`preprocess` driver killed hard", "the CLI driver (SIGKILL) and so its local Ray, "
                                 "the 3rd batch held half-way by a gate, batches cached",
                                 "the rerun: every image exactly once, whole crops and manifest, no temp file; it "
                                 "first killed the Ray agents the dead driver left"),
    "tune_node_loss": ("worker node lost mid-trial", "the node running the trial, held by a gate at epoch 2 once "
                       "the driver had registered its 1st checkpoint",
                       "trial resumed from the checkpoint on the other node, same MLflow run, epoch 1 not retrained"),
    "tune_checkpoint_killed": ("trial killed while writing its checkpoint", "the trial's worker process (SIGKILL), "
                               "held by a gate with 1 of the 2 files of its epoch-2 checkpoint written",
                               "the retry started from the epoch-1 checkpoint (epoch 2 trained again), same MLflow "
                               "run FINISHED, the last checkpoint whole"),
    "tune_sigint": ("driver interrupted (CLI)", "SIGINT to `tune` with its 2nd trial held by a gate after its 1st "
                    "checkpoint", "exit 130 + resume hint; `--resume` reran no finished trial and printed the best"),
    "tune_driver_killed": ("`tune` driver killed hard", "SIGKILL to `tune` with its 2nd trial held by a gate once the "
                           "driver's state named its 1st checkpoint",
                           "`--resume` continued that trial from the checkpoint in its own MLflow run, reran no "
                           "finished trial, left no run (trial or study) RUNNING"),
    "tune_mlflow_outage": ("MLflow server stopped mid-study", "`mlflow server` (SIGTERM) with both trials held by a "
                           "gate after their 1st checkpoint",
                           "checkpoints kept, TrackingError naming the server; after restart `--resume` completed every run"),
    "run_budget_driver_killed": ("`run --budget` driver killed hard", "SIGKILL to `run` with a full-data retrain "
                                 "trial held by a gate at its start (cv done)",
                                 "the rerun counted the killed run's seconds against the budget, reused every tune "
                                 "trial, marked the killed runs KILLED, gave its trials only what was left (or said "
                                 "it could not)"),
}


def describe(name: str, rec: dict) -> str:
    if name == "preprocess_node_loss":
        return (f"{rec['images']} images in {rec['batches']} batches: killed at {rec['killed_at_s']} s with "
                f"{rec['batches_done_before']} batches in the cache, batches then running on {rec['worker_busy']}; "
                f"finished in {rec['seconds']} s; rerun: {rec['rerun_cached']} cached")
    if name == "preprocess_driver_killed":
        return (f"{rec['images']} images in batches of 4: killed at {rec['killed_at_s']} s with {rec['batches_cached']} "
                f"batches cached; the rerun killed the dead driver's {rec['agents_reaped']} agents (frozen by the test "
                f"so that their own exit a minute later cannot race it); rerun: {rec['rerun']}; {rec['seconds']} s in all")
    if name == "tune_node_loss":
        return f"killed {rec['killed']} at {rec['at_s']} s; MLflow val_f1 steps {rec['steps']}; {rec['seconds']} s"
    if name == "tune_checkpoint_killed":
        return f"killed at {rec['at_s']} s; MLflow val_f1 steps {rec['steps']}; {rec['seconds']} s"
    if name == "tune_sigint":
        return (f"SIGINT at {rec['interrupted_at_s']} s: {rec['finished_before']} of {rec['started_before']} started "
                f"trials finished; resumed to 3/3; {rec['seconds']} s in all")
    if name == "tune_driver_killed":
        return (f"killed at {rec['killed_at_s']} s with runs {rec['runs_before']}; resumed to 3/3 FINISHED; "
                f"{rec['seconds']} s in all")
    if name == "tune_mlflow_outage":
        return (f"server stopped at {rec['stopped_at_s']} s, restarted at {rec['restarted_at_s']} s; "
                f"{rec['checkpoints_kept']} trial checkpoint(s) kept; {rec['seconds']} s in all")
    if name == "run_budget_driver_killed":
        return (f"{rec['budget_s']} s budget: killed at {rec['killed_at_s']} s ({rec['used_before_s']} s counted, "
                f"{rec['budget_s'] - rec['used_before_s']:.0f} s left); the rerun closed {rec['closed']} run(s), set its "
                f"trials' deadline {rec['trial_deadline_s']} s after its start and took {rec['rerun_s']} s "
                f"(exit {rec['rerun_rc']}): {'; '.join(rec['rerun_line'])}")
    return json.dumps(rec)


SMOKE = {"preprocess_node_loss":   # one simulated cluster, about a minute
         "tests/cluster/test_multinode_preprocess.py::test_batches_spread_over_both_nodes_and_survive_losing_one"}


def table(folder: Path, names=ROWS) -> str:
    recs = {p.stem: json.loads(p.read_text()) for p in Path(folder).glob("*.json")}
    rows = [{"fault": f, "killed": k, "when / measured": describe(n, recs[n]) if n in recs else "(no record: the test failed or did not run)",
             "survived": s} for n, (f, k, s) in ROWS.items() if n in names]
    return markdown_table(pd.DataFrame(rows))


def main(argv: list[str]) -> int:
    """Run the fault tests and print the table; ``--records DIR``: print the table of the records an
    earlier run left in DIR (FAULTS_RECORD=DIR pytest tests/cluster/...) and exit 1 if a row has
    none; ``--smoke``: only the faults in SMOKE."""
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, help="a folder of records: print their table, run nothing")
    ap.add_argument("--smoke", action="store_true", help="only " + ", ".join(SMOKE))
    a = ap.parse_args(argv)
    names = SMOKE if a.smoke else ROWS
    if a.records:
        print(table(a.records, names))
        missing = [n for n in names if not (a.records / f"{n}.json").is_file()]
        return 1 if missing else 0
    tests = list(SMOKE.values()) if a.smoke else ["tests/cluster/test_multinode_preprocess.py",
                                                   "tests/cluster/test_multinode_tune.py"]
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, FAULTS_RECORD=d, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, env=env)
        print(table(Path(d), names))
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
