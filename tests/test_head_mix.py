"""benchmarks/head_mix.py: each head's answer taken from either run, scored against the answers."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.labels import decode, encode

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, ids, classes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"ImageID": ids, "ans": classes}).to_csv(path, index=False)


def test_a_mix_takes_each_head_from_the_run_named_for_it(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"{i:04d}.jpg" for i in range(60)]
    truth = rng.integers(0, 18, 60)
    m, g, a = decode(truth)
    good_gender = encode(rng.integers(0, 3, 60), g, rng.integers(0, 3, 60))   # only its gender is right
    good_rest = encode(m, 1 - g, a)                                            # all but gender right
    write(tmp_path / "data" / "eval" / "answers.csv", ids, truth)
    write(tmp_path / "A" / "results" / "submission.csv", ids, good_rest)
    # B lists the images in another order: mixed by image, not by row
    write(tmp_path / "B" / "results" / "submission.csv", ids[::-1], good_gender[::-1])
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "head_mix.py"), "--data", str(tmp_path / "data"),
                          f"A={tmp_path / 'A'}", f"B={tmp_path / 'B'}"], capture_output=True, text=True, check=True)
    rows = [r for r in out.stdout.splitlines() if r.startswith("| A") or r.startswith("| B")]
    assert len(rows) == 8   # 2 runs for each of 3 heads
    best = [r for r in rows if r.startswith("| A | B | A |")]
    assert best and best[0].split("|")[4].strip() == "1.0000", best
    assert "| A | A | A | 0.0000 |" in out.stdout   # every gender wrong: no class right


def test_a_mix_needs_two_named_runs(tmp_path):
    for runs in (["A=x"], ["A=x", "A=y"], ["A=x", "B"]):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "head_mix.py"), "--data", str(tmp_path), *runs],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "two or more runs as NAME=WORKSPACE, each name once" in out.stderr, runs
