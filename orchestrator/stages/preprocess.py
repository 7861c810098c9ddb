"""`preprocess`: crop the face out of every train and eval image on Ray workers.

Two steps, both Ray tasks over batches of images:
  1. detect: decode, MTCNN on a downscaled copy (same-size images batched), crop the faces
     found; a miss keeps its weak face (below the threshold) as a candidate, no crop yet
     (with second_pass, also the faces of a low-threshold re-detection).
  2. fallback: with every detection known, each miss gets the most probable candidate that
     agrees with the prior (where faces usually are: the person's photos and all photos),
     else the prior box itself; then its crop.
Why tasks and not Ray Data or an actor pool: a task whose worker process dies is retried by
Ray (max_retries) with no pool to wedge; Ray Data's actor pools hang on 2 cores when they hold
every CPU (ray-project/ray#44687), and a fixed pool keeps a dead actor's slot (ray#62746;
benchmarks/README.md "Hang traps met on 2 cores"). MTCNN still loads once
per worker process: tasks reuse their process, and the detector is cached in it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import write_bytes_atomic, write_parquet_atomic
from core.dataset import load_eval, load_train
from core.faces import CropSettings, Priors, crop_box, crop_jpeg, miss_box, normalise
from core.failpoints import failpoint
from core.label_table import corrections_file
from core.manifest import COLUMNS
from core.workspace import Workspace
from orchestrator.infra.crop_cache import CropCache, crop_name
from orchestrator.infra.ray_session import cluster_capacity, gpu_share, init_ray
from orchestrator.infra.storage import warn_if_not_shared
from orchestrator.options import WORKER_GPU_SHARE, PreprocessOptions
from serving.detector import Detector, decode

log = logging.getLogger(__name__)

BATCH = PreprocessOptions.batch_size


@dataclass(frozen=True)
class Summary:
    images: int
    detected: int              # a face from the detector (first or second pass)
    fallback: int              # a prior / centre box
    failed: int                # could not be decoded: error row, no crop
    skipped: int               # already done by an earlier run
    seconds: float

    def line(self) -> str:
        rate = (self.images - self.skipped) / self.seconds if self.seconds > 0 else 0.0
        return (f"preprocess: {self.images} images: {self.detected} detected, {self.fallback} "
                f"fallback, {self.failed} failed; {self.skipped} cached; {self.seconds:.1f} s "
                f"({rate:.1f} images/s)")


# -- worker side -------------------------------------------------------------------------
_DETECTORS: dict = {}


def _return_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the OS. MTCNN's tensors change shape with every
    batch, and with glibc's defaults the fragmented heap grew ~0.4 MB per image (a worker passed
    1 GB after 3,000 images); with mmap for blocks over 64 KB it stays flat (benchmarks/README.md)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 64 * 1024)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 0)           # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (macOS, musl): keep the allocator's defaults
        pass


def _detector(s: CropSettings):
    """One MTCNN per worker process and settings (a task reuses its process)."""
    import torch  # heavy: only worker processes need it

    from trainables.loop import device_of  # heavy (torch), as torch
    if s.key not in _DETECTORS:
        import ray
        _return_freed_memory()
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))   # n workers x all-core torch would oversubscribe
        _DETECTORS[s.key] = Detector(s, str(device_of()))   # Ray's GPU, or the CPU (said once)
    return _DETECTORS[s.key]


def _save_crop(img, box, s: CropSettings, crops_dir: Path, name: str) -> None:
    write_bytes_atomic(crop_jpeg(img, box, s), crops_dir / name)


def _detect_one(item: dict, dec, found, det, s: CropSettings, crops_dir: Path, key: str) -> dict:
    rec = dict(item, status="error", method="", error=dec.error, note=dec.note, crop="", candidates="",
               src_hash=dec.digest)
    if dec.img is None:
        return rec
    w, h = dec.img.size
    rec.update(w=w, h=h)
    if found is not None and found[1] >= s.prob_threshold:
        box = crop_box(found[0], w, h, s)
        name = crop_name(key, item["path"], dec.digest, box)
        _save_crop(dec.img, box, s, crops_dir, name)
        fx1, fy1, fx2, fy2 = (float(v) for v in found[0])
        x1, y1, x2, y2 = box
        return dict(rec, status="crop", method="detect", prob=found[1], crop=name, fx1=fx1,
                    fy1=fy1, fx2=fx2, fy2=fy2, x1=x1, y1=y1, x2=x2, y2=y2)
    return dict(rec, status="pending", candidates=json.dumps(det.weak_faces(dec.img, found)))


def detect_batch(items: list[dict], data: str, crops_dir: str, s: CropSettings,
                 part: str) -> list[dict]:
    """Step 1 for one batch; writes its crops and a cache part, returns the records."""
    import ray  # heavy; the driver imports it when it starts Ray
    det = _detector(s)
    where = f"{det.device}, Ray GPUs {ray.get_gpu_ids()}"
    decs = [decode(Path(data) / it["path"]) for it in items]
    ok = [i for i, d in enumerate(decs) if d.img is not None and min(d.img.size) >= s.min_side]
    found = dict(zip(ok, det.detect([decs[i].img for i in ok])))
    recs = []
    for i, (it, dec) in enumerate(zip(items, decs)):
        recs.append(dict(_detect_one(it, dec, found.get(i), det, s, Path(crops_dir), s.key), device=where))
        if i == len(items) // 2:   # half-way through a batch: some crops written, its part not yet
            failpoint("detect_batch", first=items[0]["path"], node=ray.get_runtime_context().get_node_id())
    CropCache(Path(crops_dir), s).write_part(part, recs)
    return recs


def crop_batch(items: list[dict], data: str, crops_dir: str, s: CropSettings, part: str) -> list[dict]:
    """Step 2 for one batch of misses whose box the driver chose; writes crops and a part."""
    recs = []
    for it in items:
        dec = decode(Path(data) / it["path"])
        if dec.img is None:   # the file changed under us since step 1
            recs.append(dict(it, status="error", error=dec.error, crop=""))
            continue
        box = (it["x1"], it["y1"], it["x2"], it["y2"])
        name = crop_name(s.key, it["path"], dec.digest, box)
        _save_crop(dec.img, box, s, Path(crops_dir), name)
        recs.append(dict(it, status="crop", crop=name, src_hash=dec.digest))
    CropCache(Path(crops_dir), s).write_part(part, recs)
    return recs


# -- driver side -------------------------------------------------------------------------
def image_table(data: Path, corrections: Path | None = None) -> pd.DataFrame:
    """Every train and eval image with its labels (train.csv + ``corrections``), in manifest order."""
    train = load_train(data, corrections=corrections)
    train = train.assign(split="train", image_id="")[["path", "person", "split", "image_id", "kind",
                                                      "mask", "gender", "age", "label"]]
    ev = load_eval(data).assign(person="", split="eval", kind="", mask=-1, gender=-1, age=-1, label=-1)
    return pd.concat([train, ev[train.columns]], ignore_index=True)


def source_stats(data: Path, paths) -> pd.DataFrame:
    rows = []
    for p in paths:
        st = (Path(data) / p).stat()
        rows.append((p, st.st_size, st.st_mtime_ns))
    return pd.DataFrame(rows, columns=["path", "src_size", "src_mtime"])


def _part_name(step: str, items: list[dict]) -> str:
    h = hashlib.sha1("\n".join(f"{it['path']}|{it['src_mtime']}" for it in items).encode())
    return f"{step}-{h.hexdigest()[:16]}"


def _run_tasks(fn, batches, args: tuple, resources: dict, workers: int, desc: str, progress: bool):
    """Run ``fn`` over batches with at most ``workers`` in flight; yields records as they finish."""
    import ray
    from tqdm import tqdm
    # retried if a worker process dies. A GPU task's process exits after its batch (max_calls=1,
    # Ray's default only for tasks declared with num_gpus, not for .options(num_gpus=)): an idle
    # worker would keep its CUDA context and cached MTCNN on the card after preprocessing ends
    calls = 1 if resources.get("num_gpus") else 0
    remote = ray.remote(max_retries=3, max_calls=calls)(fn).options(**resources)
    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="img", disable=not progress,
               smoothing=0.1)
    pending, todo = {}, list(batches)
    try:
        while todo or pending:
            while todo and len(pending) < workers:
                b = todo.pop(0)
                pending[remote.remote(b, *args, _part_name(desc, b))] = len(b)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                bar.update(pending.pop(ref))
                yield from ray.get(ref)
    finally:
        bar.close()


def _batches(items: list[dict], size: int) -> list[list[dict]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _priors(recs: dict[str, dict], persons: dict[str, str]) -> Priors:
    return Priors.from_detections(
        (persons.get(p, ""), normalise((r["fx1"], r["fy1"], r["fx2"], r["fy2"]), r["w"], r["h"]))
        for p, r in recs.items() if r["method"] in ("detect",))


def crop_priors(ws: Workspace) -> tuple[CropSettings, Priors] | None:
    """The settings and the global prior the workspace's crops were last made with: what crops
    a new photo as this run cropped its eval images (None where no preprocess run left them)."""
    settings = CropCache.stored_settings(ws.crops)
    state = None if settings is None else CropCache(ws.crops, settings).state_file
    if state is None or not state.is_file():
        return None
    recs = pd.read_parquet(state).to_dict("records")
    return settings, Priors(_priors({r["path"]: r for r in recs}, {}).global_box)


def _choose(rec: dict, person: str, priors: Priors, s: CropSettings) -> dict:
    """The box of a miss: a weak face near the prior, else the prior (or centre) box."""
    w, h = rec["w"], rec["h"]
    prior, how = priors.box(person, w, h, s)
    cands = json.loads(rec["candidates"]) if rec["candidates"] else []
    fbox, prob, method = miss_box(cands, prior, how, s)
    x1, y1, x2, y2 = crop_box(fbox, w, h, s)
    fx1, fy1, fx2, fy2 = (float(v) for v in fbox)
    return dict(rec, method=method, prob=prob, fx1=fx1, fy1=fy1, fx2=fx2, fy2=fy2,
                x1=x1, y1=y1, x2=x2, y2=y2)


def _same_box(a: dict, b: dict) -> bool:
    return all(abs(a[k] - b[k]) < 0.5 for k in ("x1", "y1", "x2", "y2"))


def preprocess(data: Path, ws: Workspace, settings: CropSettings = CropSettings(), *,
               address: str | None = None, workers: int | None = None,
               num_gpus_per_worker: float | None = 0.0, progress: bool = True, batch_size: int = BATCH) -> pd.DataFrame:
    """Crop every train and eval image (skipping what earlier runs finished); returns the
    manifest (also written to ``ws.manifest``), with the run's Summary in ``.attrs["summary"]``.

    Args:
        address: Ray cluster ("auto": the running one); None starts Ray locally.
        workers: batches in flight at once (default: every CPU, or GPUs / num_gpus_per_worker).
        num_gpus_per_worker: GPUs each worker asks Ray for; 0: CPU workers; None: WORKER_GPU_SHARE of a
            GPU where the cluster has GPUs, else CPU. MTCNN runs on CUDA wherever torch sees it.
        batch_size: images per Ray task.
    """
    t0 = time.time()
    data = Path(data).resolve()
    images = image_table(data, corrections_file(ws))   # the manifest holds the corrected labels
    stats = source_stats(data, images["path"])
    cache = CropCache(ws.crops, settings).open()
    recs = cache.load(stats)
    todo = [it for it in stats.to_dict("records") if it["path"] not in recs]
    init_ray(address)
    warn_if_not_shared(ws, tune=False, address=address)   # workers on other hosts must see the crop folder
    gpus = gpu_share(num_gpus_per_worker, WORKER_GPU_SHARE)
    workers = workers or _default_workers(gpus)
    # one CPU each even on a GPU: decoding and cropping are CPU work
    resources = {"num_cpus": 1, "num_gpus": gpus}
    args = (str(data), str(ws.crops), settings)
    for r in _run_tasks(detect_batch, _batches(todo, batch_size), args, resources,
                        workers, "detect", progress):
        recs[r["path"]] = r
    persons = dict(zip(images["path"], images["person"]))
    redo = _fallback_todo(recs, persons, settings)
    # fallback crops are CPU work: they reserve no GPU share
    for r in _run_tasks(crop_batch, _batches(redo, batch_size), args, {"num_cpus": 1}, workers,
                        "fallback", progress):
        recs[r["path"]] = r
    cache.consolidate(list(recs.values()))
    manifest = build_manifest(images, recs)
    write_parquet_atomic(manifest, ws.manifest)
    worked = {it["path"] for it in todo} | {r["path"] for r in redo}
    manifest.attrs["summary"] = summarise(manifest, len(images) - len(worked), time.time() - t0)
    return manifest


def _fallback_todo(recs: dict[str, dict], persons: dict[str, str], s: CropSettings) -> list[dict]:
    """Misses whose box is new or moved (the priors shift as detections come in)."""
    priors = _priors(recs, persons)
    redo = []
    for path, r in recs.items():
        if r["status"] == "error" or r["method"] == "detect":
            continue
        new = _choose(r, persons[path], priors, s)
        if not (r["status"] == "crop" and _same_box(new, r)):
            redo.append(new)
    return redo


def _default_workers(num_gpus: float) -> int:
    res = cluster_capacity()   # an autoscaling cluster: what it can grow to
    slots = int(res.get("CPU", 1))
    if num_gpus:
        slots = min(slots, int(res.get("GPU", 0) / num_gpus))
    return max(1, slots)


def build_manifest(images: pd.DataFrame, recs: dict[str, dict]) -> pd.DataFrame:
    """The manifest (core.manifest.COLUMNS) in image_table order, plus how each box was
    found (method), decoding notes and where it was detected (device)."""
    r = pd.DataFrame([recs[p] for p in images["path"]])
    out = images.reset_index(drop=True).copy()
    for c in ("x1", "y1", "x2", "y2", "prob"):
        out[c] = r[c].astype(float).to_numpy()
    out["fallback"] = (r["status"].eq("crop") & ~r["method"].isin(["detect", "weak_detect"])).to_numpy()
    out["error"] = r["error"].fillna("").astype(str).to_numpy()
    out["error"] = np.where(r["status"].eq("error"), out["error"], "")
    out["crop"] = np.where(r["status"].eq("crop"), r["crop"], "")
    out["method"] = np.where(r["status"].eq("error"), "", r["method"])
    out["note"] = r["note"].fillna("").astype(str).to_numpy()
    out["device"] = r["device"].fillna("").astype(str).to_numpy()
    return out[list(COLUMNS) + ["method", "note", "device"]]


def summarise(manifest: pd.DataFrame, skipped: int = 0, seconds: float = 0.0) -> Summary:
    failed = int((manifest["crop"] == "").sum())
    fallback = int(manifest["fallback"].sum())
    return Summary(len(manifest), len(manifest) - failed - fallback, fallback, failed, skipped, seconds)
