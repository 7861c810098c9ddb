"""The train / eval loop as plain functions (no Ray): testable and reused by the trainable."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

# test-time augmentation views, applied to a normalised NCHW batch
TTA_VIEWS = {"hflip": lambda x: x.flip(3)}


def device_of() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    # bf16 on GPU roughly doubles throughput; CPU stays fp32 (bf16 is slow on most CPUs)
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_one_epoch(model: nn.Module, loader, loss_fn: nn.Module, optimizer, scheduler,
                    device: torch.device, *, max_batches: int = 0) -> float:
    """One pass over ``loader`` (at most ``max_batches`` batches if > 0); mean training loss.
    The scheduler steps per batch (cosine over the whole run)."""
    model.train()
    total, n = 0.0, 0
    for i, (x, y, _) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(y)
        n += len(y)
    return total / max(n, 1)


@dataclass(frozen=True)
class EvalResult:
    loss: float          # mean loss against the training targets
    f1: float            # macro F1 against the scored labels (age: competition boundary)
    acc: float
    probs: np.ndarray    # [N, C] softmax, averaged over the original view and TTA views


@torch.no_grad()
def predict_batch(model: nn.Module, x: torch.Tensor, tta: tuple[str, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the original view, softmax averaged over original + TTA views)."""
    for name in tta:
        if name not in TTA_VIEWS:
            raise ValueError(f"unknown TTA view {name!r}; valid: {', '.join(TTA_VIEWS)}")
    with _autocast(x.device):
        logits = model(x).float()
        probs = logits.softmax(1)
        for name in tta:
            probs = probs + model(TTA_VIEWS[name](x)).float().softmax(1)
    return logits, probs / (1 + len(tta))


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: nn.Module, device: torch.device, num_classes: int,
             *, tta: tuple[str, ...] = ("hflip",)) -> EvalResult:
    model.eval()
    losses, probs, scored = [], [], []
    for x, y, s in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, p = predict_batch(model, x, tta)
        losses.append(loss_fn(logits, y).item() * len(y))
        probs.append(p.cpu().numpy())
        scored.append(s.numpy())
    probs_np, s_np = np.concatenate(probs), np.concatenate(scored)
    pred = probs_np.argmax(1)
    f1 = f1_score(s_np, pred, average="macro", labels=list(range(num_classes)), zero_division=0)
    return EvalResult(sum(losses) / len(s_np), float(f1), float((pred == s_np).mean()), probs_np)
