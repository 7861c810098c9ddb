"""Softmax probabilities of a trained model on face crops, with TTA (used by the ensemble and
the MLflow pyfunc models)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.labels import num_outputs

from .augment import eval_transform
from .config import TrialConfig
from .data import decode_crop
from .loop import batch_to, device_of, predict_batch, to_device
from .models import data_config


class _Crops(Dataset):
    """Crop files, or crops as encoded image bytes (JPEG/PNG, as preprocess writes them)."""

    def __init__(self, crops: list, size: int, transform):
        self.crops, self.size, self.transform = crops, size, transform

    def __len__(self):
        return len(self.crops)

    def __getitem__(self, i):
        c = self.crops[i]
        src = io.BytesIO(c) if isinstance(c, (bytes, bytearray)) else Path(c)
        # decoded exactly like the training cache, so OOF and eval predictions match
        return self.transform(image=decode_crop(src, self.size))["image"]


def predict_probs(model: nn.Module, cfg: TrialConfig, crops: list, *,
                  tta: tuple[str, ...] = ("hflip",), batch_size: int = 64) -> np.ndarray:
    """[N, outputs] softmax probabilities (per head for a joint model) averaged over the original
    view and ``tta`` views; ``crops`` are crop files or their encoded bytes."""
    dc = data_config(model, cfg.img_size)
    loader = DataLoader(_Crops(list(crops), cfg.img_size, eval_transform(cfg.img_size, dc["mean"], dc["std"])),
                        batch_size=batch_size, shuffle=False)
    device = device_of()
    model = to_device(model, device).eval()
    out = [predict_batch(model, batch_to(x, device), tta, cfg.head, cfg.precision)[1].cpu().numpy() for x in loader]
    return np.concatenate(out) if out else np.zeros((0, num_outputs(cfg.head)), dtype=np.float32)
