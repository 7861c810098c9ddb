"""How fast this machine trains a config: what `run --budget` sizes its trials with."""
from __future__ import annotations

import time

import numpy as np
import torch

from .augment import train_transform
from .config import TrialConfig
from .loop import autocast, batch_to, to_device
from .models import build_model, data_config


def train_images_per_s(cfg: TrialConfig, *, batches: int = 6, warmup: int = 2,
                       threads: int | None = None) -> float:
    """Augment + forward + backward + step of ``cfg``'s model on random batches, in the trial's
    precision and memory format, after ``warmup`` batches (oneDNN picks its kernels on the first
    ones). The augmentation runs in the trial's own thread, as with DataLoader workers = 0."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    model = to_device(build_model(cfg, pretrained=""), device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    dc = data_config(model, cfg.img_size)
    augment = train_transform(cfg.head, cfg.strength, cfg.img_size, dc["mean"], dc["std"], seed=0)
    crops = np.random.default_rng(0).integers(0, 256, (cfg.batch_size, cfg.img_size, cfg.img_size, 3), np.uint8)
    y = torch.zeros(cfg.batch_size, dtype=torch.long)
    for i in range(warmup + batches):
        if i == warmup:
            t0 = time.perf_counter()
        x = batch_to(torch.stack([augment(image=c)["image"] for c in crops]), device)
        with autocast(device, cfg.precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batches * cfg.batch_size / (time.perf_counter() - t0)
