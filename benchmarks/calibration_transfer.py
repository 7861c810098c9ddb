"""Do the calibration offsets fitted on the cv folds' OOF predictions help the full-data models?

`run` (``--eval-vote full``) fits its macro-F1 offsets on the fold models' out-of-fold
predictions but applies them to the full-data models, which saw every person and trained to
another point of their schedule. This scores both kinds of voter on labelled eval images, with
no offsets, with the fitted offsets and with the share the ensemble's held-out check applied:
if the offsets' gain on the full-data voters is near their gain on the fold voters (whose own
OOF they were fitted on), the transfer holds.

    PYTHONPATH=. python benchmarks/calibration_transfer.py --data DATA --workspace WS [--workspace WS ...] [--persons 500]
    PYTHONPATH=. python benchmarks/calibration_transfer.py --smoke --data DATA --workspace WS   # 2 persons

DATA: a data set whose eval/answers.csv holds the true classes (benchmarks/quality.py makes
one from the real faces, the demo data has one); each WS a finished `run` workspace on it.
Prediction only: no training.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from core.manifest import read_manifest
from core.workspace import Workspace
from orchestrator.stages.ensemble import EnsembleOptions, calibrate, eval_crops, oof_predictions, predict_eval
from results.calibration import CalibrationSpec, fit_offsets
from results.scoring import score_classes
from results.selection import choose_models
from results.tables import markdown_table
from results.voting import joint_log_probs, predict_classes


def voters(chosen: dict, phase: str) -> dict:
    return {h: [c for c in ms if c.phase == phase] for h, ms in chosen.items()}


def score(y: np.ndarray, pred: np.ndarray) -> dict:
    return {k: round(v, 4) for k, v in score_classes(y, pred).items() if k != "accuracy"}


def transfer(data: Path, ws: Workspace, persons: int, study: str) -> list[dict]:
    uri = ws.tracking_uri()
    client = MlflowClient(uri)
    chosen = choose_models(client, study=study)
    manifest = read_manifest(ws.manifest)
    order, crops = eval_crops(data, ws, manifest)
    answers = pd.read_csv(data / "eval" / "answers.csv").set_index("ImageID")["ans"]
    keep = np.arange(len(order))[:persons * 7]     # the first images of info.csv
    y = answers.loc[[order[i] for i in keep]].to_numpy(int)
    train = manifest[manifest["split"] == "train"].drop_duplicates("path").set_index("path")
    opts = EnsembleOptions(study=study)
    with tempfile.TemporaryDirectory() as tmp:
        oof = oof_predictions(client, chosen, train, Path(tmp), opts.vote, opts.tta)
    fitted = fit_offsets(oof.log_probs, oof.y, CalibrationSpec()).offsets
    applied = calibrate(oof, opts)
    rows = []
    for phase in ("full", "cv"):
        lp = joint_log_probs(predict_eval(uri, voters(chosen, phase), [crops[i] for i in keep],
                                          EnsembleOptions(study=study, eval_vote="all")))
        for name, off in (("none", None), ("fitted on the folds' OOF", fitted),
                          (f"as applied ({applied.shrink:g} of them)", applied.offsets)):
            rows.append({"workspace": ws.root.name, "voters": phase, "offsets": name,
                         "images": len(keep)} | score(y, predict_classes(lp, off)))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--workspace", type=Path, action="append", required=True, help="a finished `run` workspace")
    ap.add_argument("--persons", type=int, default=500, help="eval persons scored (7 images each)")
    ap.add_argument("--study", default="run-all")
    ap.add_argument("--smoke", action="store_true", help="2 eval persons: seconds, for the test suite")
    a = ap.parse_args(argv)
    persons = 2 if a.smoke else a.persons
    rows = [r for w in a.workspace for r in transfer(a.data, Workspace(w), persons, a.study)]
    print(markdown_table(pd.DataFrame(rows)))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
