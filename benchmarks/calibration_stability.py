"""How steady the ensemble's calibration decision is: the held-out check, reseeded.

On the out-of-fold predictions of a real run (the workspace's newest study, or --study), the
decision is taken again under --seeds different person partitions, by the old rule (one
partition, all offsets or none: applied when held-out F1 >= the uncalibrated F1) and by the
ensemble's rule (results.calibration.heldout_check: the mean of REPEATS partitions, and a
share of the offsets, 0, 1/2 or all). Prints the spread of the held-out gain and of the
decision over the seeds.

    PYTHONPATH=. python benchmarks/calibration_stability.py --workspace WS [--study S] [--seeds 10]
    PYTHONPATH=. python benchmarks/calibration_stability.py --smoke     # synthetic OOF, seconds
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.labels import SEED  # noqa: E402
from results.calibration import REPEATS, fit_offsets, heldout_check, heldout_f1  # noqa: E402


def real_oof(ws: Path, study: str | None):
    """(log-probs, truth, persons) of the workspace's chosen fold models, as `ensemble` builds them."""
    from mlflow import MlflowClient

    from core.manifest import read_manifest
    from core.workspace import Workspace
    from orchestrator.stages.ensemble import oof_predictions
    from results.selection import choose_models
    w = Workspace(ws)
    client = MlflowClient(w.tracking_uri())
    chosen = choose_models(client, study=study, include_full=False)
    train = read_manifest(w.manifest).query("split == 'train'").drop_duplicates("path").set_index("path")
    with tempfile.TemporaryDirectory() as tmp:
        oof = oof_predictions(client, chosen, train, Path(tmp), "soft")
    return oof.log_probs, oof.y, oof.persons


def synthetic_oof(n: int = 700, seed: int = SEED):
    from benchmarks.ensemble_calibration import synthetic_oof as make
    return make(n, seed)


def measure(log_probs, y, persons, seeds: int) -> dict:
    before = fit_offsets(log_probs, y).f1_before
    old_gain, old_applied, new_gain, new_shrink = [], [], [], []
    for s in range(seeds):
        held = heldout_f1(log_probs, y, persons, seed=1000 + s)      # one partition, all or none
        old_gain.append(held - before)
        old_applied.append(held >= before)
        check = heldout_check(log_probs, y, persons, seed=2000 + s * REPEATS)   # disjoint seeds
        new_shrink.append(check.best_shrink)
        new_gain.append(check.at(check.best_shrink) - before)
    return {"images": len(y), "persons": len(np.unique(persons)), "f1_before": before,
            "old_gain": np.array(old_gain), "old_applied": np.array(old_applied, float),
            "new_gain": np.array(new_gain), "new_shrink": np.array(new_shrink)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path)
    ap.add_argument("--study", default=None)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="synthetic OOF predictions, 2 seeds")
    a = ap.parse_args()
    t0 = time.time()
    lp, y, persons = synthetic_oof() if a.smoke else real_oof(a.workspace, a.study)
    m = measure(lp, y, persons, 2 if a.smoke else a.seeds)
    print(f"{m['images']} OOF images of {m['persons']} persons, uncalibrated macro F1 {m['f1_before']:.4f}; "
          f"{len(m['old_gain'])} reseeded checks; {time.time() - t0:.0f} s, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"old rule (1 partition, all or none): held-out gain {m['old_gain'].mean():+.4f} ± "
          f"{m['old_gain'].std():.4f} (min {m['old_gain'].min():+.4f}, max {m['old_gain'].max():+.4f}); "
          f"applied in {m['old_applied'].mean():.0%} of the seeds")
    shares = {s: float(np.mean(m['new_shrink'] == s)) for s in (0.0, 0.5, 1.0)}
    print(f"new rule ({REPEATS} partitions, share 0/0.5/1): held-out gain {m['new_gain'].mean():+.4f} ± "
          f"{m['new_gain'].std():.4f} (min {m['new_gain'].min():+.4f}, max {m['new_gain'].max():+.4f}); "
          f"share chosen " + ", ".join(f"{s:g}: {p:.0%}" for s, p in shares.items())
          + f"; applied share {m['new_shrink'].mean():.2f} ± {m['new_shrink'].std():.2f}")


if __name__ == "__main__":
    main()
