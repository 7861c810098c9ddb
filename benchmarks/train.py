"""Training speed: (1) a trial's images/s against the same model's forward+backward on
in-memory tensors (the limit; target >= 0.9); (2) a Tune study of N trials against the same
trials as plain loops one after another (target wall ratio <= 1.05 at equal CPU count), with
Ray start-up and per-trial overhead reported separately.

    PYTHONPATH=. python benchmarks/train.py [--model test_efficientnet --img-size 64 --trials 4]
    PYTHONPATH=. python benchmarks/train.py --smoke    # tiny and short, in a temporary folder (the tests run it)

Needs a workspace with a crop manifest (`preprocess`); without one it writes demo data and
plain centre crops (not MTCNN's: this measures training, not cropping) into benchmarks/_work/.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from core.dataset import load_train  # noqa: E402
from core.folds import FoldSpec, ensure_folds  # noqa: E402
from core.labels import num_outputs  # noqa: E402
from core.workspace import Workspace  # noqa: E402
from search_spaces import recipe_config  # noqa: E402
from trainables.loop import device_of, train_one_epoch  # noqa: E402
from trainables.trainer import build_parts, fit  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work"


def demo_workspace(work: Path = WORK, persons: int = 60) -> tuple[Path, Workspace]:
    import pandas as pd
    from PIL import Image

    from core.demo_data import DemoSpec, write_demo_data
    data, ws = work / "data", Workspace(work / "ws").make()
    if not ws.manifest.is_file():
        write_demo_data(data, DemoSpec(persons, 4))
        rows = []
        for r in load_train(data).to_dict("records"):
            crop = r["path"].replace("/", "__") + ".jpg"   # JPEG, as preprocess writes them (checked whole)
            with Image.open(data / r["path"]) as im:
                w, h = im.size
                im.convert("RGB").crop((0, (h - w) // 2, w, (h + w) // 2)).resize((128, 128)).save(
                    ws.crops / crop, "JPEG", quality=95)
            rows.append({**{k: r[k] for k in ("path", "person", "kind", "mask", "gender", "age", "label")},
                         "split": "train", "image_id": "", "x1": 0.0, "y1": 0.0, "x2": 0.0, "y2": 0.0,
                         "prob": float("nan"), "fallback": True, "error": "", "crop": crop})
        pd.DataFrame(rows).to_parquet(ws.manifest, index=False)
    return data, ws


def images_per_s(cfg, ws, batches: int) -> tuple[float, float]:
    """(trial loader + step images/s, in-memory tensor images/s) for the same model and shape."""
    parts = build_parts(replace(cfg, max_batches=batches), ws)
    train_one_epoch(parts.model, parts.train_loader, parts.loss_fn, parts.optimizer, None, parts.device,
                    max_batches=2)   # warm-up
    t = time.perf_counter()
    train_one_epoch(parts.model, parts.train_loader, parts.loss_fn, parts.optimizer, None, parts.device,
                    max_batches=batches)
    trial = batches * cfg.batch_size / (time.perf_counter() - t)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=parts.device)
    y = torch.randint(0, num_outputs(cfg.head), (cfg.batch_size,), device=parts.device)   # a one-head cfg
    fake = [(x, y, y)] * batches
    train_one_epoch(parts.model, fake[:2], parts.loss_fn, parts.optimizer, None, parts.device)
    t = time.perf_counter()
    train_one_epoch(parts.model, fake, parts.loss_fn, parts.optimizer, None, parts.device)
    return trial, batches * cfg.batch_size / (time.perf_counter() - t)


def study_vs_loops(data, ws, cfgs, cpus: int, cpus_per_trial: int) -> dict:
    import ray
    from ray import tune

    from results.tracking import ensure_experiment
    from trainables.config import RunContext
    from trainables.trainable import train_head
    torch.set_num_threads(cpus)   # the plain loops get every CPU, one trial at a time
    t = time.perf_counter()
    for c in cfgs:
        fit(c, ws)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t
    uri = ws.tracking_uri()
    ensure_experiment(uri, "orchestrator", ws.root / "mlartifacts")
    ctx = RunContext(str(data), str(ws.root), uri, study=f"bench-{int(time.time())}")
    space = cfgs[0].to_dict() | {"lr": tune.grid_search([c.lr for c in cfgs]), "run": ctx.to_dict()}
    t = time.perf_counter()
    grid = tune.Tuner(tune.with_resources(train_head, {"cpu": cpus_per_trial}), param_space=space,
                      tune_config=tune.TuneConfig(reuse_actors=True),
                      run_config=tune.RunConfig(name=ctx.study, storage_path=str(ws.tune), verbose=0)).fit()
    study = time.perf_counter() - t
    in_trial = sum(r.metrics["time_total_s"] for r in grid)
    ray.shutdown()
    parallel = cpus // cpus_per_trial
    return {"plain_s": plain, "ray_start_s": start, "study_s": study, "ratio": study / plain,
            "trial_time_sum_s": in_trial,
            "overhead_per_trial_s": (study - in_trial / parallel) / len(cfgs) * parallel}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--workspace", type=Path)
    p.add_argument("--model", default="test_efficientnet")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=10, help="batches timed for images/s")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="epochs per study trial")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="8 demo persons, 32 px, 2 batches, 2 trials of 1 epoch, "
                   "in a temporary folder: seconds, for the test suite")
    a = p.parse_args()
    if a.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            a.img_size, a.batch_size, a.batches, a.trials, a.epochs = 32, 8, 2, 2, 1
            a.cpus = min(a.cpus, 2)
            return measure(a, *demo_workspace(Path(tmp), persons=8))
    measure(a, *((a.data, Workspace(a.workspace)) if a.workspace else demo_workspace()))


def measure(a, data: Path, ws: Workspace) -> None:
    ensure_folds(load_train(data), ws.root, FoldSpec(5))
    cfg = recipe_config("mask", model=a.model, pretrained="none", img_size=a.img_size, batch_size=a.batch_size,
                        num_workers=a.num_workers, epochs=a.epochs, max_batches=a.batches if a.smoke else 0)
    torch.set_num_threads(a.cpus_per_trial)
    trial, limit = images_per_s(cfg, ws, a.batches)
    print(f"device {device_of()}, {a.model} @ {a.img_size}px, batch {a.batch_size}, {a.cpus_per_trial} CPU:")
    print(f"  trial {trial:.1f} img/s, in-memory limit {limit:.1f} img/s, ratio {trial / limit:.3f} (target >= 0.9)")
    cfgs = [replace(cfg, lr=cfg.lr * (1 + i)) for i in range(a.trials)]
    r = study_vs_loops(data, ws, cfgs, a.cpus, a.cpus_per_trial)
    print(f"  {a.trials} trials x {a.epochs} epochs: plain loops {r['plain_s']:.1f} s, Tune study "
          f"{r['study_s']:.1f} s -> ratio {r['ratio']:.3f} (target <= 1.05); Ray start-up {r['ray_start_s']:.1f} s "
          f"(not in the ratio), per-trial overhead {r['overhead_per_trial_s']:.1f} s "
          f"(sum of in-trial time {r['trial_time_sum_s']:.1f} s)")


if __name__ == "__main__":
    main()
