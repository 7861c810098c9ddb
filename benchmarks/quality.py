"""Model quality on real faces within a CPU budget (the goal: macro F1 >= 0.60 in 23 minutes).

Lays out the real-face set ($UTKMASK_DIR, benchmarks/realfaces.py) as the competition does
(train: the first --train-persons of persons.txt; eval: lines --eval-from..--eval-to, other persons, with answers.csv), runs the
whole chain with `python -m orchestrator run --budget B`, and scores the submission:

  python benchmarks/quality.py --budget 23m                       # the full study (run's default backbone)
  python benchmarks/quality.py --budget 23m -- --backbone resnet10t-64   # another backbone, e.g. from scratch
  python benchmarks/quality.py --budget 23m --variant recipe      # one model per head, no calibration
  python benchmarks/quality.py --smoke [--work DIR]               # demo data, a tiny model, 200 s (the tests run it)

Prints 18-class macro F1, accuracy and per-head macro F1 on the eval persons, and the wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realfaces import utkmask_folder  # noqa: E402
from orchestrator.chain.budget import budget_use_line, parse_duration  # noqa: E402
from results.scoring import score_submission  # noqa: E402

UTK = utkmask_folder()   # $UTKMASK_DIR (benchmarks/realfaces.py)
# the variants compared: extra `run` flags
VARIANTS = {
    # run's defaults: one joint model (a classifier per head), cv folds + full-data models
    # (one per trial slot); the full-data models vote with hflip TTA, calibrated on the folds' OOF
    "study": [],
    # the competition recipe's structure: one model per head with its own lr / loss /
    # augmentation and a softmax per head, cv folds + one full-data model each, no calibration
    "recipe": ["--per-head", "--num-samples", "1", "--full-seeds", "1", "--no-calibrate", "--eval-vote", "all",
               "--age-head", "softmax"],
}
# --smoke: the same `run --budget` path on the demo data with a tiny model; the suite also
# checks that this run keeps to its budget (tests/test_run.py), so it runs once per suite
SMOKE_BUDGET = "200s"
SMOKE_RUN = ["--model", "test_efficientnet", "--img-size", "32"]


def layout(work: Path, train_persons: int, eval_from: int, eval_to: int) -> Path:
    """The data set in the competition layout (made once, reused)."""
    data = work / f"utk-{train_persons}-{eval_from}-{eval_to}"
    if (data / "eval" / "answers.csv").is_file():
        return data
    persons = (UTK / "persons.txt").read_text().splitlines()
    lists = {"train": persons[:train_persons], "eval": persons[eval_from - 1:eval_to]}
    for split, names in lists.items():
        lst = work / f"{split}-{train_persons}-{eval_from}-{eval_to}.txt"
        lst.write_text("\n".join(names) + "\n")
        subprocess.run([sys.executable, str(UTK / "make_utkmask.py"), split, str(UTK / "faces"),
                        str(UTK / "landmarks.csv"), str(lst), str(data)], check=True)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default=None, help=f"run's budget (default 23m; --smoke: {SMOKE_BUDGET})")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="study")
    ap.add_argument("--train-persons", type=int, default=1000)
    ap.add_argument("--eval-from", type=int, default=2001)
    ap.add_argument("--eval-to", type=int, default=3000)
    ap.add_argument("--work", type=Path, default=None, help="data sets and workspaces (default benchmarks/_work; "
                    "--smoke: a temporary folder)")
    ap.add_argument("--data", type=Path, default=None, help="a layout made already (benchmarks/gpu/utk_layout.py): "
                    "scored on its eval/answers.csv; the real-face set is then not needed")
    ap.add_argument("--smoke", action="store_true", help="8 + 2 demo persons instead of the real faces, "
                    f"and {' '.join(SMOKE_RUN)}")
    ap.add_argument("run_args", nargs="*", help="more `run` flags after --, e.g. -- --model resnet18")
    a = ap.parse_args()
    a.budget = a.budget or (SMOKE_BUDGET if a.smoke else "23m")
    if a.smoke and a.work is None:
        with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
            return measure(a, *smoke_layout(Path(tmp)))
    if a.smoke:
        return measure(a, *smoke_layout(a.work))
    if a.data is None and not (UTK / "make_utkmask.py").is_file():
        sys.exit(f"needs the real-face set at {UTK}")
    work = a.work or ROOT / "benchmarks" / "_work"
    work.mkdir(parents=True, exist_ok=True)
    measure(a, a.data or layout(work, a.train_persons, a.eval_from, a.eval_to), work)


def smoke_layout(work: Path) -> tuple[Path, Path]:
    """The built-in demo data (with eval/answers.csv) in ``work``."""
    from core.demo_data import DemoSpec, write_demo_data
    return write_demo_data(work / "demo", DemoSpec(8, 2)), work


def measure(a, data: Path, work: Path) -> None:
    ws = work / f"ws-{a.variant}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "orchestrator", "run", "--data", str(data), "--workspace", str(ws),
           "--budget", a.budget, *(SMOKE_RUN if a.smoke else []), *VARIANTS[a.variant], *a.run_args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.time() - t0
    s = score_submission(ws / "results" / "submission.csv", data / "eval" / "answers.csv")
    budget = parse_duration(a.budget)
    print(f"\nvariant {a.variant}: wall {wall:.0f} s of {budget:.0f} s budget ({wall / budget:.2f}x); workspace {ws}")
    print(f"18-class macro F1 {s['f1']:.4f}  accuracy {s['accuracy']:.4f}  mask F1 {s['mask_f1']:.4f}  "
          f"gender F1 {s['gender_f1']:.4f}  age F1 {s['age_f1']:.4f}")
    use = json.loads((ws / "results" / "budget.json").read_text())   # the run's own account of its reserve
    print(budget_use_line(use))
    print(json.dumps({"variant": a.variant, "wall_s": round(wall, 1), "budget_s": budget, **{k: round(v, 4) for k, v in s.items()},
                      "reserve_s": use["reserve_s"], "ensemble_s": use["ensemble"], "audit_s": use["audit"],
                      "workspace": str(ws), "data": str(data)}))


if __name__ == "__main__":
    main()
