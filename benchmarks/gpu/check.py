"""The GPU check: install the wheel bundle, then take in one go every measurement that
benchmarks/README.md "GPU" asks of a real card, at fixed small sizes; figures go to OUT.

    # on the GPU box (Python 3.12, the image's torch; benchmarks/README.md "GPU" says how to prepare it)
    python3 benchmarks/gpu/check.py OUT --bundle benchmarks/_work/gpu/bundle --utk benchmarks/_work/gpu/utk
    # rehearsal on a CPU: the same steps, tiny; --bundle a bundle built with --python 3.11
    python benchmarks/gpu/check.py OUT --size tiny [--utk DIR] [--bundle ...]   # DIR: $UTKMASK_DIR

Steps, each in its own process and timed: install (the bundle into WORK/site, first on every
step's PYTHONPATH), data (utkmask persons in the competition layout), mtcnn (preprocess with GPU
workers, then CPU workers on every core, same images), throughput (a trial's loader + step
against the step on tensors already on the device), packing (one trial slot alone against two
on one GPU: the speed probe's Ray actors with a trial's resources), budget (`run --budget` on
utkmask, scored by benchmarks/quality.py). OUT gets figures.json (every figure, the device, the
date, the settings, each step's seconds), figures.md and check.log: three small files to copy
back from the box.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.realfaces import utkmask_folder  # noqa: E402  (the standard library only)
STEPS = ("install", "data", "mtcnn", "throughput", "packing", "budget")
SIZES = {
    # one H100/H200, 16 cores: about 7 minutes in all (the budget run takes 3 of them)
    "card": dict(train=1000, eval_from=2001, eval_to=3000, mtcnn_persons=300, mtcnn_eval=20,
                 model="tf_efficientnet_lite0", pretrained="lite0", img_size=224, batch_size=64, batches=30,
                 loader_workers=(0, 6),
                 probe_batches=20, cpus_per_trial=4, gpus_per_trial=0.5, budget="3m"),
    # rehearsal on a loaded 2-core CPU: every step's code path, tiny
    "tiny": dict(train=24, eval_from=2001, eval_to=2008, mtcnn_persons=6, mtcnn_eval=2,
                 model="tf_efficientnet_lite0", pretrained="lite0", img_size=64, batch_size=8, batches=2,
                 loader_workers=(0, 1),
                 probe_batches=2, cpus_per_trial=1, gpus_per_trial=0.5, budget="4m"),
}


# -- the steps (each runs in a child process: `check.py --step NAME ...`) -----------------
def sig(x: float) -> float:
    """Three significant digits: a CPU rehearsal's 0.23 images/s and a card's 2,310 both read."""
    return float(f"{x:.3g}")


def step_install(a, s: dict) -> dict:
    if a.bundle is None:
        return {"skipped": "no --bundle: the running Python's own packages are used"}
    import hashlib
    site, unpack = a.work / "site", a.work / "bundle"
    for d in (site, unpack):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for line in (a.bundle / "bundle.sha256").read_text().splitlines():
        digest, name = line.split()
        if hashlib.sha256((a.bundle / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{a.bundle / name}: sha256 differs from bundle.sha256 (a part broke in transfer)")
    tar = unpack / "bundle.tar"
    with tar.open("wb") as f:
        for part in sorted(a.bundle.glob("bundle.tar.[0-9][0-9][0-9]")):
            f.write(part.read_bytes())
    subprocess.run(["tar", "-xf", str(tar), "-C", str(unpack)], check=True)
    wheels = sorted(map(str, (unpack / "wheels").glob("*.whl")))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--target", str(site), *wheels], check=True)
    return {"wheels": len(wheels), "site": str(site)}


def step_versions(a, s: dict) -> dict:
    """What runs: package versions (from WORK/site where installed) and the device."""
    import importlib.metadata as md

    import torch
    names = ("ray", "mlflow-skinny", "mlflow", "optuna", "albumentations", "facenet-pytorch", "timm", "torch", "numpy")
    versions = {}
    for n in names:
        try:
            versions[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    import albumentations, facenet_pytorch, mlflow, optuna, ray  # noqa: E401,F401  (they import)
    cuda = torch.cuda.is_available()
    return {"versions": versions, "ray_from": str(Path(ray.__file__).parent), "python": sys.version.split()[0],
            "device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA)", "cpus": os.cpu_count(),
            "bf16": bool(cuda and torch.cuda.is_bf16_supported())}


def step_data(a, s: dict) -> dict:
    from benchmarks.gpu.utk_layout import layout, persons
    train, evals = persons(a.utk, s["train"], s["eval_from"], s["eval_to"])
    out = {}
    for name, tr, ev in (("data", train, evals), ("mtcnn-data", train[:s["mtcnn_persons"]], evals[:s["mtcnn_eval"]])):
        t = time.time()
        shutil.rmtree(a.work / name, ignore_errors=True)
        layout(a.utk, tr, ev, a.work / name)
        out[name] = {"train_persons": len(tr), "eval_persons": len(ev), "images": 7 * (len(tr) + len(ev)),
                     "seconds": round(time.time() - t, 1)}
    return out


def _ray(a) -> None:
    """A local Ray over every core and the card's GPUs; one logical GPU where torch sees none
    (the rehearsal), so the GPU paths are scheduled as on the card and run on the CPU."""
    import ray
    import torch
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=None if torch.cuda.is_available() else 1,
             include_dashboard=False, log_to_driver=False)


def step_mtcnn(a, s: dict) -> dict:
    from benchmarks.preprocess import quality
    from core.faces import CropSettings
    from core.workspace import Workspace
    from orchestrator.preprocess import preprocess
    _ray(a)
    data, out = a.work / "mtcnn-data", {}
    for name, gpus, workers in (("gpu", 0.25, None), ("cpu", 0.0, os.cpu_count())):
        ws = a.work / f"ws-mtcnn-{name}"
        shutil.rmtree(ws, ignore_errors=True)
        t = time.time()
        m = preprocess(data, Workspace(ws).make(), CropSettings(), num_gpus_per_worker=gpus, workers=workers,
                       progress=False)
        wall = time.time() - t
        q = quality(m, data)
        out[name] = {"images": len(m), "seconds": round(wall, 1), "images_per_s": sig(len(m) / wall),
                     "crops_on_face": round(float(q["all"]), 4), "gpus_per_worker": gpus,
                     "workers": workers or "default", "where": m["device"].mode().iloc[0]}
    out["gpu_over_cpu"] = sig(out["gpu"]["images_per_s"] / out["cpu"]["images_per_s"])
    return out


def step_throughput(a, s: dict) -> dict:
    from dataclasses import replace

    from benchmarks.train import images_per_s
    from core.dataset import load_train
    from core.folds import FoldSpec, ensure_folds
    from core.workspace import Workspace
    from search_spaces import recipe_config
    from trainables.config import FULL_DATA
    from trainables.loop import device_of, uses_bf16
    data, ws = a.work / "mtcnn-data", Workspace(a.work / "ws-mtcnn-gpu")   # the GPU workers' crops
    ensure_folds(load_train(data), ws.root, FoldSpec(5))
    base = recipe_config("mask", model=s["model"], pretrained="none", img_size=s["img_size"],
                         batch_size=s["batch_size"], fold=FULL_DATA)
    out = {"model": s["model"], "img_size": s["img_size"], "batch_size": s["batch_size"],
           "device": str(device_of()), "bf16": uses_bf16(device_of()), "channels_last": True}
    for w in s["loader_workers"]:
        trial, limit = images_per_s(replace(base, num_workers=w), ws, s["batches"])
        out[f"loader_workers_{w}"] = {"trial_images_per_s": sig(trial), "on_device_images_per_s": sig(limit),
                                      "ratio": sig(trial / limit)}
    return out


def step_packing(a, s: dict) -> dict:
    from search_spaces import recipe_config
    from trainables.speed import probe_trial_slots
    _ray(a)
    cfg = recipe_config("all", model=s["model"], pretrained="none", img_size=s["img_size"], batch_size=s["batch_size"])
    alone = probe_trial_slots(cfg, 1, s["cpus_per_trial"], 1.0, s["probe_batches"])
    packed = probe_trial_slots(cfg, 2, s["cpus_per_trial"], s["gpus_per_trial"], s["probe_batches"])
    total = sum(p["images_per_s"] for p in packed)
    return {"alone_images_per_s": sig(alone[0]["images_per_s"]), "packed_total_images_per_s": sig(total),
            "packed_each": [sig(p["images_per_s"]) for p in packed], "packed_over_alone": sig(total / alone[0]["images_per_s"]), "gpu_ids": [p["gpu_ids"] for p in alone + packed],
            "device": alone[0]["device"], "cpus_per_trial": s["cpus_per_trial"]}


def step_budget(a, s: dict) -> dict:
    # fine-tuning, as a user with a card runs it: ImageNet weights from the pip package (offline)
    run_args = ["--model", s["model"], "--pretrained", s["pretrained"], "--img-size", str(s["img_size"]),
                "--gpus-per-trial", str(s["gpus_per_trial"]),
                "--cpus-per-trial", str(s["cpus_per_trial"])]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data", str(a.work / "data"),
           "--work", str(a.work / "quality"), "--budget", s["budget"], "--", *run_args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(res.stdout[-20000:] + res.stderr[-20000:])
    if res.returncode:
        raise SystemExit(f"quality.py exited {res.returncode}")
    return {"budget": s["budget"], "run_args": " ".join(run_args), **json.loads(res.stdout.strip().splitlines()[-1])}


STEP_FUNCS = {"install": step_install, "versions": step_versions, "data": step_data, "mtcnn": step_mtcnn,
              "throughput": step_throughput, "packing": step_packing, "budget": step_budget}


# -- the driver ----------------------------------------------------------------------------
def child_env(a) -> dict:
    path = [str(a.work / "site"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), PYTHONUNBUFFERED="1",
                RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
                TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")


def run_step(a, step: str, log) -> dict:
    result = a.out / f".{step}.json"
    result.unlink(missing_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), str(a.out), "--step", step, "--size", a.size,
            "--work", str(a.work)] + (["--utk", str(a.utk)] if a.utk else []) + (["--bundle", str(a.bundle)] if a.bundle else [])
    log.write(f"\n===== {step}: {' '.join(argv)}\n")
    log.flush()
    t = time.time()
    rc = subprocess.run(argv, env=child_env(a), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    res = json.loads(result.read_text()) if result.is_file() else {}
    result.unlink(missing_ok=True)
    return {"seconds": round(time.time() - t, 1), "rc": rc, **res}


def markdown(fig: dict) -> str:
    rows = [f"| {step} | {r['seconds']} | {r['rc']} | {json.dumps({k: v for k, v in r.items() if k not in ('seconds', 'rc')})} |"
            for step, r in fig["steps"].items()]
    return (f"GPU check, {fig['date']}, size {fig['size']}, on {fig.get('device', '?')}\n\n"
            "| step | seconds | rc | figures |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for figures.json, figures.md, check.log")
    ap.add_argument("--bundle", type=Path, default=None, help="folder with bundle.tar.NNN and bundle.sha256 (build_bundle.py)")
    ap.add_argument("--utk", type=Path, default=utkmask_folder(),   # $UTKMASK_DIR (benchmarks/realfaces.py)
                    help="make_utkmask.py, landmarks.csv, persons.txt and faces/ (at least the chosen persons')")
    ap.add_argument("--size", choices=sorted(SIZES), default="card")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu-check"), help="data, workspaces, the installed bundle")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset, in order")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)   # internal: run one step here
    a = ap.parse_args()
    a.out, a.work = a.out.resolve(), a.work.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.step:
        sys.path.insert(0, str(ROOT))
        res = STEP_FUNCS[a.step](a, SIZES[a.size])
        (a.out / f".{a.step}.json").write_text(json.dumps(res, default=str))
        return
    fig = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "size": a.size,
           "settings": SIZES[a.size], "steps": {}}
    t0 = time.time()
    with (a.out / "check.log").open("w") as log:
        for step in [s for s in a.steps.split(",") if s]:
            for name in (step, "versions") if step == "install" else (step,):
                fig["steps"][name] = r = run_step(a, name, log)
                if name == "versions":
                    fig["device"] = r.get("device", "?")
                print(f"{name}: {r['seconds']} s, rc {r['rc']}", flush=True)
                fig["total_seconds"] = round(time.time() - t0, 1)
                (a.out / "figures.json").write_text(json.dumps(fig, indent=1, default=str))
                (a.out / "figures.md").write_text(markdown(fig))
    print(markdown(fig))


if __name__ == "__main__":
    main()
