"""How fast this machine trains a config: what `run --budget` sizes its trials with."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from .augment import train_transform
from .config import TrialConfig
from .freeze import trainable
from .loop import batch_to, device_of, predict_batch, ray_gpu_ids, to_device, train_one_epoch
from .models import build_model, data_config


def _batches(cfg: TrialConfig, model, device: torch.device, n: int):
    """``n`` augmented batches of random crops, as the trial's loader yields them: (x, y, scored)."""
    dc = data_config(model, cfg.img_size)
    augment = train_transform(cfg.head, cfg.strength, cfg.img_size, dc["mean"], dc["std"], seed=0)
    crops = np.random.default_rng(0).integers(0, 256, (cfg.batch_size, cfg.img_size, cfg.img_size, 3), np.uint8)
    y = torch.zeros(cfg.batch_size, dtype=torch.long)
    for _ in range(n):
        yield torch.stack([augment(image=c)["image"] for c in crops]), y, y


def _sync(device: torch.device) -> None:
    # CUDA runs asynchronously: a clock read before the queued kernels finish times nothing
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_images_per_s(cfg: TrialConfig, *, batches: int = 6, warmup: int = 2,
                       threads: int | None = None, device: torch.device | None = None) -> float:
    """Training images per second of ``cfg``'s model through the trial's own epoch code
    (trainables.loop.train_one_epoch: augment, forward, backward, step, in the trial's precision
    and memory format), after ``warmup`` batches (cuDNN / oneDNN pick kernels on the first ones).
    The augmentation runs in the measuring thread, as with DataLoader workers = 0."""
    if threads:
        torch.set_num_threads(threads)
    device = device or torch.device("cpu")
    model = to_device(build_model(cfg, pretrained="none"), device)
    opt = torch.optim.Adam(trainable(model), lr=1e-4)
    loss = torch.nn.CrossEntropyLoss()
    train_one_epoch(model, _batches(cfg, model, device, warmup), loss, opt, None, device, precision=cfg.precision)
    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(model, _batches(cfg, model, device, batches), loss, opt, None, device, precision=cfg.precision)
    _sync(device)
    return batches * cfg.batch_size / (time.perf_counter() - t0)


def predict_images_per_s(cfg: TrialConfig, *, batches: int = 4, tta: tuple[str, ...] = ("hflip",),
                         device: torch.device | None = None) -> float:
    """Images per second the ensemble predicts with ``tta`` (each view a forward pass), measured
    as ``predict_batch`` runs it (the trial's precision), after one warm-up batch."""
    device = device or torch.device("cpu")
    model = to_device(build_model(cfg, pretrained="none"), device).eval()
    data = [batch_to(x, device) for x, _, _ in _batches(cfg, model, device, batches + 1)]
    predict_batch(model, data[0], tta, cfg.head, cfg.precision)
    _sync(device)
    t0 = time.perf_counter()
    for x in data[1:]:
        probs = predict_batch(model, x, tta, cfg.head, cfg.precision)[1]
    probs.cpu()   # the ensemble reads every batch back
    _sync(device)
    return batches * cfg.batch_size / (time.perf_counter() - t0)


class _TrialSlot:
    """A Ray actor, as a Tune trial is: its own fresh process. A task could reuse a preprocessing
    worker, whose allocator settings (mallopt, orchestrator/stages/preprocess.py) cost ~20% of a step."""

    def measure(self, cfg: TrialConfig, threads: int, batches: int) -> dict:
        device = device_of()
        return {"images_per_s": train_images_per_s(cfg, batches=batches, threads=threads, device=device),
                "predict_images_per_s": predict_images_per_s(cfg, batches=max(1, batches // 2), device=device),
                "pid": os.getpid(), "threads": torch.get_num_threads(), "device": device.type,
                "gpu_ids": ray_gpu_ids()}


def probe_trial_slots(cfg: TrialConfig, slots: int, cpus_per_trial: float, gpus_per_trial: float = 0.0,
                      batches: int = 10) -> list[dict]:
    """``train_images_per_s`` in ``slots`` Ray actors at once, each holding one trial's CPUs and
    GPUs: measured where and as the trials will run (on the workers' CPUs or GPUs, side by side,
    sharing memory bandwidth), not on the driver, which may be another machine (a 0-CPU head,
    no GPU). Still one snapshot: a machine whose speed drifts can be misread (benchmarks/README.md, B7)."""
    import ray
    threads = max(1, int(cpus_per_trial))
    actor = ray.remote(_TrialSlot).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)
    actors = [actor.remote() for _ in range(slots)]
    try:
        # a first round only starts them all (process, imports, oneDNN kernels): a slot measuring
        # while another still imports torch reads half its speed
        ray.get([a.measure.remote(cfg, threads, 1) for a in actors])
        return ray.get([a.measure.remote(cfg, threads, batches) for a in actors])
    finally:
        for a in actors:
            ray.kill(a)
