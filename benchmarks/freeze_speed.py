"""Training speed with the pretrained backbone's first layers frozen (`--freeze N`), against all
layers training: one trial's images/s through the trial's own epoch code (trainables/speed.py:
augment, forward, backward, step, in the trial's precision), one thread as a 1-CPU trial has,
each setting measured in every round, rounds interleaved so a drifting machine moves all alike.

    python benchmarks/freeze_speed.py                       # run's default backbone, N = 0..5
    python benchmarks/freeze_speed.py --backbone lite0-64 --freeze 0 3 --rounds 5
    python benchmarks/freeze_speed.py --smoke               # tiny and short (the tests run it)
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict

from core.labels import ALL, RUN_BACKBONE, get_backbone
from search_spaces import recipe_config
from trainables.freeze import parameter_groups
from trainables.models import build_model
from trainables.speed import train_images_per_s


def measure(backbone: str, freezes: list[int], rounds: int, batches: int, precision: str, **shape) -> dict:
    """``shape``: img_size / batch_size instead of the backbone's and the recipe's (--smoke)."""
    settings = asdict(get_backbone(backbone)) | dict(precision=precision, age_head="ordinal") | shape
    cfgs = {n: recipe_config(ALL, **settings, freeze=n) for n in freezes}
    groups = parameter_groups(build_model(cfgs[freezes[0]], pretrained="none"))
    reads = {n: [] for n in freezes}
    for r in range(rounds):
        for n in freezes:
            reads[n].append(train_images_per_s(cfgs[n], batches=batches, warmup=2, threads=1))
        print(f"round {r + 1}: " + ", ".join(f"freeze {n} {reads[n][-1]:.1f}" for n in freezes), flush=True)
    base = statistics.median(reads[freezes[0]])
    return {n: {"images_per_s": statistics.median(v), "ratio": statistics.median(v) / base,
                "frozen": [_name(g) for g in groups[:n]]}
            for n, v in reads.items()}


def _name(group: list[str]) -> str:
    """A parameter group by its first module: conv_stem, blocks.0, layer1 ..."""
    parts = group[0].split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=RUN_BACKBONE)
    ap.add_argument("--freeze", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="first is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=8, help="batches timed per read")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--smoke", action="store_true", help="32 px, 2 settings, 1 round of 1 batch")
    a = ap.parse_args(argv)
    shape = {}
    if a.smoke:
        a.freeze, a.rounds, a.batches, shape = [0, 2], 1, 1, dict(img_size=32, batch_size=8)
    out = measure(a.backbone, a.freeze, a.rounds, a.batches, a.precision, **shape)
    for n, row in out.items():
        print(f"freeze {n}: {row['images_per_s']:.1f} images/s, {row['ratio']:.2f}x (frozen: "
              f"{', '.join(row['frozen']) or 'nothing'})")
    return out


if __name__ == "__main__":
    main()
