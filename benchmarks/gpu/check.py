"""The GPU check: on one card, at fixed small sizes, every measurement and check that
benchmarks/README.md "GPU" lists; figures and verdicts go to OUT.

    python benchmarks/gpu/check.py OUT [--utk DIR] [--bundle DIR] [--steps a,b]
    python benchmarks/gpu/check.py OUT --size tiny [--utk DIR]   # a dry run on a CPU
    # --utk: the real-face set, default $UTKMASK_DIR (benchmarks/realfaces.py)

Steps, each in its own process and timed: install (the bundle, if given, into WORK/site, first
on every step's PYTHONPATH), data (utkmask persons in the competition layout), mtcnn (preprocess
with GPU workers, then CPU workers, same images; what holds memory on the card afterwards),
throughput (a trial's loader + step against the step on tensors already on the device), packing
(one trial slot alone against two on one GPU), trials (two `tune` trials sharing the card: tags,
overlap, loss, precision; the model on the CPU; `reproduce`), probe (the budget's speed probe
against a trial's loop), budget (`run --budget` on utkmask, scored by benchmarks/quality.py).
OUT gets figures.json (every figure, the verdicts, the device, the date, the settings, each
step's seconds), figures.md and check.log. Exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import math
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

STEPS = ("install", "data", "mtcnn", "throughput", "packing", "trials", "probe", "budget")
SIZES = {
    # one H100/H200, 16 cores: about 7 minutes in all (the budget run takes 3 of them)
    "card": dict(train=1000, eval_from=2001, eval_to=3000, mtcnn_persons=300, mtcnn_eval=20,
                 model="tf_efficientnet_lite0", pretrained="lite0", img_size=224, batch_size=64, batches=30,
                 loader_workers=(0, 6),
                 probe_batches=20, cpus_per_trial=4, gpus_per_trial=0.5, trial_epochs=3, budget="3m"),
    # a dry run on a CPU: every step's code path, tiny
    "tiny": dict(train=24, eval_from=2001, eval_to=2008, mtcnn_persons=6, mtcnn_eval=2,
                 model="tf_efficientnet_lite0", pretrained="lite0", img_size=64, batch_size=8, batches=2,
                 loader_workers=(0, 1),
                 probe_batches=2, cpus_per_trial=1, gpus_per_trial=0.5, trial_epochs=2, budget="4m"),
}


# -- the steps (each runs in a child process: `check.py --step NAME ...`) -----------------
def sig(x: float) -> float:
    """Three significant digits: a CPU's 0.23 images/s and a card's 2,310 both read."""
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
    import albumentations  # noqa: F401  (they import)
    import facenet_pytorch  # noqa: F401
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import ray  # noqa: F401
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
    (a dry run on a CPU), so the GPU paths are scheduled as on the card and run on the CPU."""
    import ray
    import torch
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=None if torch.cuda.is_available() else 1,
             include_dashboard=False, log_to_driver=False)


def step_mtcnn(a, s: dict) -> dict:
    from benchmarks.preprocess import quality
    from core.faces import CropSettings
    from core.workspace import Workspace
    from orchestrator.stages.preprocess import preprocess
    _ray(a)
    data, out = a.work / "mtcnn-data", {}
    for name, gpus, workers in (("gpu", 0.25, None), ("cpu", 0.0, os.cpu_count())):
        ws = a.work / f"ws-mtcnn-{name}"
        shutil.rmtree(ws, ignore_errors=True)
        t = time.time()
        m = preprocess(data, Workspace(ws).make(), CropSettings(), num_gpus_per_worker=gpus, workers=workers,
                       progress=False)
        wall = time.time() - t
        left = _released() if gpus else []   # crop workers must have let go of the card
        q = quality(m, data)
        out[name] = {"images": len(m), "seconds": round(wall, 1), "images_per_s": sig(len(m) / wall),
                     "crops_on_face": round(float(q["all"]), 4), "gpus_per_worker": gpus,
                     "workers": workers or "default", "where": m["device"].mode().iloc[0],
                     "gpu_processes_after": left}
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


def _gpu_processes() -> list[dict]:
    """Processes holding memory on the card (nvidia-smi), other than this one; [] without a card."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    return [{"pid": int(p), "mib": int(m)} for p, m in rows if int(p) != os.getpid()]


def _released(wait_s: float = 30.0) -> list[dict]:
    """GPU processes left after preprocessing, given its workers ``wait_s`` to exit (asynchronous)."""
    end = time.time() + wait_s
    while (left := _gpu_processes()) and time.time() < end:
        time.sleep(1)
    return left


def step_trials(a, s: dict) -> dict:
    """Two real trials of `tune` sharing the card (the recipe's config on 2 folds: no search, so
    no trial is stopped early): their tags, overlap, loss, precision; the best model
    predicting on the CPU; `reproduce` of one of them."""
    import torch
    from mlflow.tracking import MlflowClient

    from results.tracking import download_model, find_runs, most_at_once
    from trainables.loop import precision_for
    data, ws = a.work / "mtcnn-data", a.work / "ws-mtcnn-gpu"   # the GPU workers' crops
    study = f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}"   # a rerun of the step is a new study
    cmd = [sys.executable, "-m", "orchestrator", "tune", "--head", "mask", "--phase", "both", "--num-samples", "0",
           "--folds", "2", "--max-concurrent", "2", "--study", study, "--gpus-per-trial", str(s["gpus_per_trial"]),
           "--cpus-per-trial", str(s["cpus_per_trial"]), "--model", s["model"], "--pretrained", "none",
           "--img-size", str(s["img_size"]), "--batch-size", str(s["batch_size"]), "--epochs", str(s["trial_epochs"]),
           "--data", str(data), "--workspace", str(ws)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(res.stdout[-10000:] + res.stderr[-10000:])
    if res.returncode:
        raise SystemExit(f"tune exited {res.returncode}")
    uri = f"sqlite:///{ws}/mlflow.db"
    runs = find_runs(uri, head="mask", phase="cv", study=study)
    client = MlflowClient(uri)
    losses = {r: [m.value for m in sorted(client.get_metric_history(r, "train_loss"), key=lambda m: m.step)]
              for r in runs["run_id"]}
    cuda = torch.cuda.is_available()
    expected = precision_for("cuda", "auto", torch.cuda.get_device_capability(0)) if cuda else "n/a (no CUDA)"
    best = runs.sort_values("metrics.best_val_f1", ascending=False).iloc[0]["run_id"]
    return {"devices": sorted(set(runs["tags.device"])), "precisions": sorted(set(runs["tags.precision"])),
            "expected_precision": expected, "overlap": most_at_once(uri, runs["run_id"]),
            "train_loss": {r: [sig(v) for v in ls] for r, ls in losses.items()},
            "cpu_agreement": _cpu_agreement(download_model(uri, best, a.work / "gpu-model"), data, ws),
            "reproduce": _reproduce(best, data, ws)}


def _cpu_agreement(model_file: Path, data: Path, ws: Path) -> float:
    """Share of validation images whose argmax agrees between the model on the card (in the
    trial's precision) and the same weights on the CPU in fp32."""
    import torch

    from core.workspace import Workspace
    from trainables.data import build_loaders, load_head_data
    from trainables.loop import batch_to, device_of, predict_batch, to_device
    from trainables.models import data_config, load_model_file
    model, cfg = load_model_file(model_file)
    dc = data_config(model, cfg.img_size)
    _, val = build_loaders(cfg, load_head_data(cfg, Workspace(ws)), dc["mean"], dc["std"], cpus=1)
    dev = device_of()
    on_card = to_device(load_model_file(model_file)[0], dev).eval()
    on_cpu = to_device(model, torch.device("cpu")).eval()
    same = total = 0
    for x, _, _ in val:
        a_ = predict_batch(on_card, batch_to(x, dev), (), cfg.head, cfg.precision)[1].argmax(1).cpu()
        b_ = predict_batch(on_cpu, batch_to(x, torch.device("cpu")), (), cfg.head, "fp32")[1].argmax(1)
        same, total = same + int((a_ == b_).sum()), total + len(x)
    return round(same / max(total, 1), 4)


def _reproduce(run_id: str, data: Path, ws: Path) -> dict:
    """`reproduce RUN_ID` as a user runs it: its verdict line and largest difference."""
    import re
    res = subprocess.run([sys.executable, "-m", "orchestrator", "reproduce", run_id, "--data", str(data),
                          "--workspace", str(ws)], cwd=ROOT, capture_output=True, text=True)
    out = res.stdout + res.stderr
    m = re.search(r"largest difference (\S+)", out)
    largest = 0.0 if "bit for bit" in out else (float(m.group(1)) if m else None)
    verdict = next((line for line in out.splitlines() if line.startswith(f"run {run_id}")), out[-300:])
    return {"rc": res.returncode, "largest_difference": largest, "verdict": verdict}


def step_probe(a, s: dict) -> dict:
    """The budget's speed probe against a real trial's loop on the same model and batch: the
    trial's loader (its CPUs but one as workers) and train_one_epoch, on the card."""
    from dataclasses import replace

    import torch

    from benchmarks.train import images_per_s
    from core.workspace import Workspace
    from search_spaces import recipe_config
    from trainables.config import FULL_DATA
    from trainables.loop import device_of
    from trainables.speed import train_images_per_s
    ws = Workspace(a.work / "ws-mtcnn-gpu")
    cfg = recipe_config("mask", model=s["model"], pretrained="none", img_size=s["img_size"],
                        batch_size=s["batch_size"], fold=FULL_DATA)
    workers = max(0, int(s["cpus_per_trial"]) - 1)
    torch.set_num_threads(int(s["cpus_per_trial"]))   # a trial's threads for both (Ray sets them so)
    trial, _ = images_per_s(replace(cfg, num_workers=workers), ws, s["batches"])
    probe = train_images_per_s(cfg, batches=s["probe_batches"], threads=int(s["cpus_per_trial"]), device=device_of())
    return {"trial_images_per_s": sig(trial), "probe_images_per_s": sig(probe), "probe_over_trial": sig(probe / trial),
            "loader_workers": workers}


def verdicts(fig: dict) -> dict:
    """What a card must show (benchmarks/README.md "GPU"), each True / False (None where this run could not tell)."""
    st = fig["steps"]
    tr, mt, pr = st.get("trials", {}), st.get("mtcnn", {}), st.get("probe", {})
    on_card = str(fig.get("device", "cpu")).startswith("cpu") is False
    losses = list(tr.get("train_loss", {}).values())
    return {
        "trials_tagged_cuda0": all(d.startswith("cuda:0") for d in tr["devices"]) if on_card and tr.get("devices") else None,
        "two_trials_overlap_on_one_card": tr["overlap"] >= 2 if "overlap" in tr else None,
        "loss_finite_and_falling": (all(math.isfinite(v) for ls in losses for v in ls)
                                    and all(len(ls) > 1 and ls[-1] < ls[0] for ls in losses)) if losses else None,
        "precision_matches_card": tr["precisions"] == [tr["expected_precision"]] if on_card and "precisions" in tr else None,
        "probe_within_20pct_of_trial": abs(pr["probe_over_trial"] - 1) <= 0.2 if "probe_over_trial" in pr else None,
        "no_crop_worker_on_the_card_after": mt["gpu"]["gpu_processes_after"] == [] if on_card and "gpu" in mt else None,
        "cpu_predicts_as_card_99pct": tr["cpu_agreement"] >= 0.99 if on_card and "cpu_agreement" in tr else None,
        "reproduce_largest_difference": tr.get("reproduce", {}).get("largest_difference"),
    }


STEP_FUNCS = {"install": step_install, "versions": step_versions, "data": step_data, "mtcnn": step_mtcnn,
              "throughput": step_throughput, "packing": step_packing, "trials": step_trials, "probe": step_probe,
              "budget": step_budget}


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
    checks = "\n".join(f"| {k} | {v} |" for k, v in fig.get("verdicts", {}).items())
    return (f"GPU check, {fig['date']}, size {fig['size']}, on {fig.get('device', '?')}\n\n"
            "| step | seconds | rc | figures |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "| check | result (None: not measurable on this device) |\n|---|---|\n" + checks + "\n")


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
                fig["verdicts"] = verdicts(fig)
                (a.out / "figures.json").write_text(json.dumps(fig, indent=1, default=str))
                (a.out / "figures.md").write_text(markdown(fig))
    print(markdown(fig))
    failed = [k for k, v in fig.get("verdicts", {}).items() if v is False]
    if failed:
        raise SystemExit(f"GPU check failed: {', '.join(failed)} (figures in {a.out})")


if __name__ == "__main__":
    main()
