"""What a per-head mix of two finished runs would score: each head's answer taken from either run.

Reads two (or more) submissions of `benchmarks/quality.py` workspaces on the same eval persons,
splits each 18-class answer into its mask, gender and age, and scores every mix (mask from one run,
gender from another, age from a third) against eval/answers.csv. It trains nothing: it bounds what
`run` could gain by training a head on another backbone, at the cost of both runs' compute.

  python benchmarks/head_mix.py --data benchmarks/_work/utk-1000-2001-3000 \\
      lite0=benchmarks/_work/ws-study-A scratch=benchmarks/_work/ws-study-B
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

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
    ap.add_argument("--data", type=Path, required=True, help="the layout with eval/answers.csv")
    ap.add_argument("runs", nargs="+", help="NAME=WORKSPACE, two or more")
    a = ap.parse_args()
    truth = read_classes(a.data / "eval" / "answers.csv", "an answers file")
    runs = {}
    for spec in a.runs:
        name, _, ws = spec.partition("=")
        if not ws:
            ap.error(f"{spec!r}: write NAME=WORKSPACE")
        runs[name] = answers(Path(ws), truth.index)
    print("| mask from | gender from | age from | 18-class macro F1 | mask F1 | gender F1 | age F1 |\n|---|---|---|---:|---:|---:|---:|")
    for who, ans in mixes(runs):
        s = score_classes(truth.to_numpy(), ans)
        print(f"| {who['mask']} | {who['gender']} | {who['age']} | {s['f1']:.4f} | {s['mask_f1']:.4f} | "
              f"{s['gender_f1']:.4f} | {s['age_f1']:.4f} |", flush=True)
        print(json.dumps({**who, **{k: round(v, 4) for k, v in s.items()}}), file=sys.stderr)


if __name__ == "__main__":
    main()
