"""What a per-head mix of two finished runs would score: each head's answer taken from either run.

Reads two (or more) submissions of `benchmarks/quality.py` workspaces on the same eval persons,
splits each 18-class answer into its mask, gender and age, and scores every mix (mask from one run,
gender from another, age from a third) against eval/answers.csv. It trains nothing: it bounds what
`run` could gain by training a head on another backbone, at the cost of both runs' compute.

  python benchmarks/head_mix.py --data benchmarks/_work/utk-1000-2001-3000 \\
      lite0=benchmarks/_work/ws-study-A scratch=benchmarks/_work/ws-study-B
  python benchmarks/head_mix.py --smoke   # the demo data's eval answers, two runs made from them (the tests)
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.labels import HEADS, decode, encode  # noqa: E402
from results.scoring import read_classes, score_classes  # noqa: E402


def answers(ws: Path, order: pd.Index) -> pd.DataFrame:
    """A workspace's submission, in ``order``, as mask, gender and age columns."""
    sub = read_classes(ws / "results" / "submission.csv", "a submission")
    if not order.isin(sub.index).all():
        raise SystemExit(f"{ws}: its submission lacks some eval images: same eval persons needed")
    return pd.DataFrame(dict(zip(HEADS, decode(sub.loc[order].to_numpy()))), index=order)


def mixes(runs: dict[str, pd.DataFrame]):
    """Every assignment of a run to each head: (head -> run name, the mixed 18-class answers)."""
    for pick in itertools.product(runs, repeat=len(HEADS)):
        who = dict(zip(HEADS, pick))
        yield who, encode(*(runs[who[h]][h].to_numpy() for h in HEADS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="the layout with eval/answers.csv")
    ap.add_argument("runs", nargs="*", help="NAME=WORKSPACE, two or more, each name once")
    ap.add_argument("--smoke", action="store_true", help="the demo data's answers and two runs made from them, "
                    "each with one head half wrong")
    a = ap.parse_args()
    if a.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-head-mix-") as tmp:
            return measure(*smoke_runs(Path(tmp)))
    names = [spec.partition("=")[0] for spec in a.runs]
    if a.data is None or len(a.runs) < 2 or len(set(names)) < len(names) or not all("=" in r for r in a.runs):
        ap.error("give --data and two or more runs as NAME=WORKSPACE, each name once")
    measure(a.data, {name: Path(spec.partition("=")[2]) for name, spec in zip(names, a.runs)})


def smoke_runs(tmp: Path) -> tuple[Path, dict[str, Path]]:
    """The demo data (with eval/answers.csv) and two workspaces whose submissions are its answers
    with the gender (``a``) or the age (``b``) of every other image wrong."""
    from benchmarks.quality import smoke_layout   # quality.py's --smoke data: 8 + 2 demo persons
    data, _ = smoke_layout(tmp)
    truth = read_classes(data / "eval" / "answers.csv", "an answers file")
    m, g, age = decode(truth.to_numpy())
    every_other = np.arange(len(truth)) % 2 == 1
    wrong = {"a": encode(m, np.where(every_other, 1 - g, g), age),
             "b": encode(m, g, np.where(every_other, (age + 1) % 3, age))}
    runs = {}
    for name, ans in wrong.items():
        runs[name] = tmp / f"ws-{name}"
        (runs[name] / "results").mkdir(parents=True)
        pd.DataFrame({"ImageID": truth.index, "ans": ans}).to_csv(runs[name] / "results" / "submission.csv", index=False)
    return data, runs


def measure(data: Path, workspaces: dict[str, Path]) -> None:
    truth = read_classes(data / "eval" / "answers.csv", "an answers file")
    runs = {name: answers(ws, truth.index) for name, ws in workspaces.items()}
    print("| mask from | gender from | age from | 18-class macro F1 | mask F1 | gender F1 | age F1 |\n|---|---|---|---:|---:|---:|---:|")
    for who, ans in mixes(runs):
        s = score_classes(truth.to_numpy(), ans)
        print(f"| {who['mask']} | {who['gender']} | {who['age']} | {s['f1']:.4f} | {s['mask_f1']:.4f} | "
              f"{s['gender_f1']:.4f} | {s['age_f1']:.4f} |", flush=True)
        print(json.dumps({**who, **{k: round(v, 4) for k, v in s.items()}}), file=sys.stderr)


if __name__ == "__main__":
    main()
