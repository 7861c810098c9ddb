"""How fast this machine trains a config: what `run --budget` sizes its trials with."""
from __future__ import annotations

import time

import torch

from .config import TrialConfig
from .loop import autocast
from .models import build_model


def train_images_per_s(cfg: TrialConfig, *, batches: int = 3, threads: int | None = None) -> float:
    """Forward + backward + step of ``cfg``'s model on random batches (after one warm-up)."""
    if threads:
        torch.set_num_threads(threads)
    model = build_model(cfg, pretrained="").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size)
    y = torch.zeros(cfg.batch_size, dtype=torch.long)
    for i in range(batches + 1):
        if i == 1:
            t0 = time.perf_counter()
        with autocast(x.device, cfg.precision):   # the precision the trial will train in
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batches * cfg.batch_size / (time.perf_counter() - t0)
