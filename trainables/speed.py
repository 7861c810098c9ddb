"""How fast this machine trains a config: what `run --budget` sizes its trials with."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from .augment import train_transform
from .config import TrialConfig
from .loop import autocast, batch_to, device_of, ray_gpu_ids, to_device
from .models import build_model, data_config


def train_images_per_s(cfg: TrialConfig, *, batches: int = 6, warmup: int = 2,
                       threads: int | None = None, device: torch.device | None = None) -> float:
    """Augment + forward + backward + step of ``cfg``'s model on random batches, in the trial's
    precision and memory format, after ``warmup`` batches (oneDNN picks its kernels on the first
    ones). The augmentation runs in the trial's own thread, as with DataLoader workers = 0."""
    if threads:
        torch.set_num_threads(threads)
    device = device or torch.device("cpu")
    model = to_device(build_model(cfg, pretrained="none"), device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    dc = data_config(model, cfg.img_size)
    augment = train_transform(cfg.head, cfg.strength, cfg.img_size, dc["mean"], dc["std"], seed=0)
    crops = np.random.default_rng(0).integers(0, 256, (cfg.batch_size, cfg.img_size, cfg.img_size, 3), np.uint8)
    y = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)
    for i in range(warmup + batches):
        if i == warmup:
            t0 = time.perf_counter()
        x = batch_to(torch.stack([augment(image=c)["image"] for c in crops]), device)
        with autocast(device, cfg.precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * cfg.batch_size / (time.perf_counter() - t0)


class _TrialSlot:
    """A Ray actor, as a Tune trial is: its own fresh process. A task could reuse a preprocessing
    worker, whose allocator settings (mallopt, orchestrator/preprocess.py) cost ~20% of a step."""

    def measure(self, cfg: TrialConfig, threads: int, batches: int) -> dict:
        device = device_of()
        return {"images_per_s": train_images_per_s(cfg, batches=batches, threads=threads, device=device),
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
