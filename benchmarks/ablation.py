"""What each part of the ensemble adds, on one finished `run` (benchmarks/quality.py's workspace).

Re-runs the real `ensemble` stage on the same trained models with parts switched off, and
scores every submission against the eval persons' answers:

  python benchmarks/ablation.py --workspace benchmarks/_work/ws-study-... --data benchmarks/_work/utk-1000-2001-3000

  python benchmarks/ablation.py --smoke [--workspace WS --data DATA]   # rows 0 and 5 (the tests run it)
With --smoke and no workspace it first makes one: `quality.py --smoke` (demo data, a tiny model).
Rows: one full-data model; + hflip TTA; all full-data seeds; the cv folds alone; cv + full;
+ macro-F1 calibration; hard instead of soft vote; only the full-data models voting, calibrated
on the folds' OOF (`--eval-vote full`, the run's default), without TTA, and with the age read
as ordinal (results/ordinal.py). Training parts
(joint vs per-head model, image size, epochs) need whole runs: see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlflow import MlflowClient  # noqa: E402

from core.workspace import Workspace  # noqa: E402
from orchestrator.infra.ray_session import ray_session  # noqa: E402
from orchestrator.stages.ensemble import EnsembleOptions, ensemble  # noqa: E402
from results.scoring import score_submission  # noqa: E402
from results.selection import choose_models  # noqa: E402


def variants(client: MlflowClient) -> list[tuple[str, EnsembleOptions]]:
    chosen = choose_models(client)
    full = sorted({m.run_id for ms in chosen.values() for m in ms if m.phase == "full"})
    base = EnsembleOptions(use_ray=True, calibrate=False, eval_vote="all")   # every model votes; arms change it
    return [
        ("one full-data model, no TTA", replace(base, runs=tuple(full[:1]), tta=())),
        ("one full-data model + hflip TTA", replace(base, runs=tuple(full[:1]))),
        (f"{len(full)} full-data models (seeds) + TTA", replace(base, runs=tuple(full))),
        ("cv fold models only + TTA", replace(base, include_full=False)),
        ("cv folds + full-data models + TTA (soft vote)", base),
        ("... + macro-F1 calibration (the fold models vote too)", replace(base, calibrate=True)),
        ("... with hard vote instead of soft", replace(base, calibrate=True, vote="hard")),
        ("full-data models vote, calibrated on the cv folds' OOF + TTA", replace(base, calibrate=True, eval_vote="full")),
        ("full-data models vote, calibrated on the cv folds' OOF, no TTA",
         replace(base, calibrate=True, eval_vote="full", tta=())),
        ("... + TTA, age read as ordinal (cuts fitted on the OOF, results/ordinal.py)",
         replace(base, calibrate=True, eval_vote="full", age_decode="ordinal")),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, help="a finished `run`'s workspace (required unless --smoke)")
    ap.add_argument("--data", type=Path, help="the data set with eval/answers.csv (required with --workspace)")
    ap.add_argument("--rows", default="", help="comma-separated row numbers to run (default: all)")
    ap.add_argument("--smoke", action="store_true", help="rows 0 and 5 only; without --workspace on a smoke run "
                    "of the demo data made first (seconds to minutes, for the test suite)")
    a = ap.parse_args()
    if a.smoke and a.workspace is None:
        with tempfile.TemporaryDirectory(prefix="bench-ablation-") as tmp:
            out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--work", tmp],
                                 check=True, capture_output=True, text=True).stdout
            made = json.loads(out.strip().splitlines()[-1])
            a.workspace, a.data = Path(made["workspace"]), Path(made["data"])
            return measure(a)
    if a.workspace is None or a.data is None:
        ap.error("--workspace and --data are required (or --smoke)")
    measure(a)


def measure(a) -> None:
    rows_wanted = {0, 5} if a.smoke and not a.rows else {int(r) for r in a.rows.split(",") if r.strip()}
    ws = Workspace(a.workspace)
    out = ws.results / "ablation"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with ray_session():
        for i, (name, opts) in enumerate(variants(MlflowClient(ws.tracking_uri()))):
            if rows_wanted and i not in rows_wanted:
                continue
            # each row's own report, and nothing logged: the run's report and its ensemble model
            # (what `promote` takes) stay the run's
            res = ensemble(a.data, ws, replace(opts, submission=out / f"submission-{i}.csv",
                                               report_dir=out / f"report-{i}", record=False))
            s = score_submission(res.submission, a.data / "eval" / "answers.csv")
            rows.append({"variant": name, **{k: round(v, 4) for k, v in s.items()},
                         "oof_f1": round(res.metrics.get("oof_f1_after", float("nan")), 4)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| variant | 18-class macro F1 | accuracy | mask F1 | gender F1 | age F1 | OOF F1 |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['f1']:.4f} | {r['accuracy']:.4f} | {r['mask_f1']:.4f} | "
              f"{r['gender_f1']:.4f} | {r['age_f1']:.4f} | {r['oof_f1']:.4f} |")


if __name__ == "__main__":
    main()
