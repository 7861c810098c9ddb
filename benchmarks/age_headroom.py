"""How good must the age head be for 18-class macro F1 >= 0.60?

Keeps a real submission's mask and gender predictions and replaces its age predictions with
those of a simulated age *estimator*: the true age plus Gaussian noise of sigma years (one draw
per person, since a person's seven photos show one face, plus a small per-photo part), cut at
the competition's 30 / 60. Scores each on the eval persons, next to the submission as it is:

  python benchmarks/age_headroom.py --submission WS/results/submission.csv --data DATA

DATA is quality.py's layout (eval/answers.csv); the true ages come from the utkmask file names
the eval image IDs are made from (make_utkmask.py: sha1 of "<face file>/<kind>"), or from
DATA/eval/ages.csv (ImageID,age,person) where the data set has one (the demo data does).
  python benchmarks/age_headroom.py --smoke    # demo data, its answers as the submission (the tests run it)
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.labels import age_group, decode, encode  # noqa: E402
from core.metrics import macro_f1  # noqa: E402
from results.scoring import score_submission  # noqa: E402

KINDS = [f"mask{k}" for k in range(1, 6)] + ["incorrect_mask", "normal"]
PER_PHOTO_SD = 1.0   # years: a person's photos differ only by the mask drawn on them


def true_ages(persons_file: Path) -> pd.DataFrame:
    """Image ID -> true age and person (face file), from the face files the eval set was made of."""
    ages = {}
    for name in persons_file.read_text().split():
        for kind in KINDS:
            ages[hashlib.sha1(f"{name}/{kind}".encode()).hexdigest() + ".jpg"] = (int(name.split("_")[0]), name)
    return pd.DataFrame.from_dict(ages, orient="index", columns=["age", "person"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submission", type=Path, help="the submission to keep mask and gender of (required unless --smoke)")
    ap.add_argument("--data", type=Path, help="quality.py's data folder (eval/answers.csv; required unless --smoke)")
    ap.add_argument("--persons", type=Path, help="the eval persons list (default: quality.py's next to DATA)")
    ap.add_argument("--sigmas", default="4,5,6,7,8,10,12,14")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="demo data in a temporary folder, two sigmas, one repeat; "
                    "its answers are the submission unless --submission")
    a = ap.parse_args()
    if a.smoke:
        from core.demo_data import DemoSpec, write_demo_data
        with tempfile.TemporaryDirectory(prefix="bench-headroom-") as tmp:
            a.data = write_demo_data(Path(tmp) / "demo", DemoSpec(4, 4))
            a.submission = a.submission or a.data / "eval" / "answers.csv"
            a.sigmas, a.repeats = "5,10", 1
            return measure(a)
    if a.submission is None or a.data is None:
        ap.error("--submission and --data are required (or --smoke)")
    measure(a)


def eval_ages(a) -> pd.DataFrame:
    """Image ID -> true age and person: DATA/eval/ages.csv, else from the utkmask persons list."""
    if (a.data / "eval" / "ages.csv").is_file():
        return pd.read_csv(a.data / "eval" / "ages.csv").set_index("ImageID")
    return true_ages(a.persons or a.data.parent / f"eval-{a.data.name.removeprefix('utk-')}.txt")


def measure(a) -> None:
    ans = pd.read_csv(a.data / "eval" / "answers.csv")
    sub = ans[["ImageID"]].merge(pd.read_csv(a.submission), on="ImageID", how="left")
    truth = eval_ages(a).reindex(ans["ImageID"])
    if truth["age"].isna().any():
        raise SystemExit(f"the eval ages do not cover {a.data / 'eval'}; pass --persons")
    y = ans["ans"].to_numpy(int)
    mask, gender, _ = decode(sub["ans"].to_numpy(int))
    print(f"submission as it is: {score_submission(a.submission, a.data / 'eval' / 'answers.csv')}")
    person = pd.factorize(truth["person"])[0]
    rng = np.random.default_rng(0)
    print("age sigma (years) | age F1 | 18-class F1 (its mask + gender) | 18-class F1 (true mask + gender)")
    true_mask, true_gender, true_age = decode(y)
    for sigma in map(float, a.sigmas.split(",")):
        rows = []
        for _ in range(a.repeats):
            est = truth["age"].to_numpy(float) + rng.normal(0, sigma, person.max() + 1)[person] \
                + rng.normal(0, PER_PHOTO_SD, len(y))
            age = age_group(np.rint(est).astype(int))
            rows.append((macro_f1(true_age, age, 3), macro_f1(y, encode(mask, gender, age), 18),
                         macro_f1(y, encode(true_mask, true_gender, age), 18)))
        m = np.mean(rows, axis=0)
        print(f"{sigma:5.0f} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f}")


if __name__ == "__main__":
    main()
