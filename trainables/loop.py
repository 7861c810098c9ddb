"""The train / eval loop as plain functions (no Ray): testable and reused by the trainable."""
from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.labels import ALL, NUM_CLASSES, encode, output_slices, target_heads
from core.metrics import accuracy, macro_f1

from .freeze import train_mode

log = logging.getLogger(__name__)

# test-time augmentation views, applied to a normalised NCHW batch (named in config.TTA_VIEW_NAMES,
# which the budget costs without importing torch; tests/test_budget_plan.py keeps the two together)
TTA_VIEWS = {"hflip": lambda x: x.flip(3)}


def ray_gpu_ids() -> list[str]:
    """The GPU ids Ray gave this process ([] outside Ray, or for a CPU trial or task)."""
    ray = sys.modules.get("ray")   # plain loops run without Ray: never imported just to ask
    if ray is None or not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_gpu_ids()]


def device_of() -> torch.device:
    """Where this process trains and predicts. Ray sets CUDA_VISIBLE_DEVICES to the GPUs it gave
    the trial or task, so ``cuda:0`` is the first of *those*, never a guessed card; where Ray was
    told not to set it (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES) Ray's first id is used.
    Where torch sees no CUDA, the CPU, said once per process."""
    ids = ray_gpu_ids()
    if torch.cuda.is_available():
        return torch.device("cuda", int(ids[0]) if ids and "CUDA_VISIBLE_DEVICES" not in os.environ else 0)
    _say_cpu_once(tuple(ids))
    return torch.device("cpu")


@cache
def _say_cpu_once(ids: tuple[str, ...]) -> None:
    if ids:   # Ray's GPUs are logical (a test) or this torch has no CUDA build / driver
        log.warning("Ray gave this process GPU(s) %s (CUDA_VISIBLE_DEVICES=%s) but torch sees no CUDA: "
                    "running on the CPU", ",".join(ids), os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    else:
        log.info("torch sees no CUDA device: running on the CPU")


def placement(device: torch.device, precision: str = "auto") -> dict[str, str]:
    """Where and how this process computes, as a trial's tags: the device, the precision it
    trains in (``precision`` resolved on this device), Ray's GPU ids, CUDA_VISIBLE_DEVICES,
    torch's CPU threads."""
    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    return {"device": name, "precision": precision_of(device, precision), "ray_gpu_ids": ",".join(ray_gpu_ids()),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "torch_threads": str(torch.get_num_threads())}   # CPU sums depend on it (`reproduce`)


def ray_gpu_share() -> float:
    """The GPU share Ray gave this process (0 outside Ray or for a CPU trial)."""
    ray = sys.modules.get("ray")
    # a driver that started Ray (reproduce, a benchmark) is no trial: Ray answers only its workers
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 0.0
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def memory_fraction(share: float) -> float | None:
    """The share of a card's memory a trial holding ``share`` of one GPU may allocate (None:
    the whole card, for a trial that has one or more to itself)."""
    return share if 0 < share < 1 else None


def cap_gpu_memory(device: torch.device, share: float) -> None:
    """Trials that share a card (--gpus-per-trial 0.5) each get their share of its memory: a
    trial whose batch does not fit then fails alone with CUDA out-of-memory, instead of the
    first to allocate taking the card from its neighbour."""
    fraction = memory_fraction(share)
    if device.type == "cuda" and fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def deterministic(device: torch.device) -> None:
    """Ask torch for the same result on every run of a config, as `reproduce` promises: cuDNN's
    deterministic kernels without autotuning, deterministic algorithms where torch has them
    (a warning, not an error, where it has none), and cuBLAS's fixed workspace (read when its
    handle is made: set before the first matmul on the card)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


@cache
def cpu_has_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere torch emulates bf16 and
    autocast is slower than fp32; with it, a step takes ~half the time (benchmarks/README.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:   # not Linux: stay on fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


BF16_FROM = (8, 0)   # compute capability of the first cards with bf16 tensor cores (Ampere);
                     # torch.cuda.is_bf16_supported() also counts older cards' slow emulation


def precision_for(device_type: str, asked: str = "auto", capability: tuple[int, int] | None = None,
                  cpu_bf16: bool = False) -> str:
    """The precision a trial computes in: ``asked`` unless "auto"; auto on a GPU is bf16 from
    compute capability 8.0 and fp16 (with a GradScaler) below it, on a CPU bf16 where the CPU
    has it natively, else fp32."""
    if asked != "auto":
        return asked
    if device_type == "cuda":
        return "bf16" if capability is not None and tuple(capability) >= BF16_FROM else "fp16"
    return "bf16" if cpu_bf16 else "fp32"


def precision_of(device: torch.device, precision: str = "auto") -> str:
    """``precision_for`` on this process's ``device``."""
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return precision_for(device.type, precision, cap, device.type == "cpu" and cpu_has_bf16())


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    return precision_of(device, precision) == "bf16"


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 or fp16 autocast (weights, optimizer and loss stay fp32) where ``precision`` asks for it."""
    dtype = AUTOCAST_DTYPES.get(precision_of(device, precision))
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device, precision: str = "auto") -> torch.amp.GradScaler:
    """fp16's gradients underflow without loss scaling; a disabled scaler is a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision_of(device, precision) == "fp16")


# one scaler per optimizer for the whole trial: a new one starts again at 2**16 and skips the
# first steps of every epoch while it halves its scale down to what the gradients allow
_SCALERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def optimizer_scaler(optimizer, device: torch.device, precision: str = "auto") -> torch.amp.GradScaler:
    """``grad_scaler`` for ``optimizer``, kept from one epoch to the next."""
    scaler = _SCALERS.get(optimizer)
    if scaler is None:
        scaler = _SCALERS[optimizer] = grad_scaler(device, precision)
    return scaler


# NHWC: oneDNN's convolutions run faster on it (with bf16 ~1.3x on the dev CPU), as on GPUs
MEMORY_FORMAT = torch.channels_last


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    return model.to(device, memory_format=MEMORY_FORMAT)


def batch_to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True, memory_format=MEMORY_FORMAT)


def train_one_epoch(model: nn.Module, loader, loss_fn: nn.Module, optimizer, scheduler,
                    device: torch.device, *, max_batches: int = 0, precision: str = "auto",
                    stop_at: float = 0.0) -> float:
    """One pass over ``loader`` (at most ``max_batches`` batches if > 0, none begun after unix time
    ``stop_at`` if > 0: a deadline); mean training loss. The scheduler steps per batch.
    The loss is summed on the device and read once at the end: a read per step would make the
    CPU wait for the GPU every batch, so loading the next batch never overlaps the compute."""
    train_mode(model)   # frozen layers (trainables/freeze.py) keep their batch norms' statistics
    scaler = optimizer_scaler(optimizer, device, precision)
    total, n = torch.zeros((), device=device), 0
    for i, (x, y, _) in enumerate(loader):
        if (max_batches and i >= max_batches) or (stop_at and i and time.time() >= stop_at):
            break
        x, y = batch_to(x, device), y.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * len(y)
        n += len(y)
    return total.item() / max(n, 1)


ORIGINAL = "orig"   # the untransformed view's name in per-view tables (OOF predictions)


@dataclass(frozen=True)
class EvalResult:
    loss: float          # mean loss against the training targets
    f1: float            # macro F1 against the scored labels (age: competition boundary;
    acc: float           #   a joint model: the 18 classes)
    probs: np.ndarray    # [N, C] softmax (per head), averaged over the original view and TTA views
    views: dict = field(default_factory=dict, repr=False)   # view name (ORIGINAL, TTA's) -> [N, C]


def softmax_by_head(logits: torch.Tensor, target: str) -> torch.Tensor:
    """Softmax over each head's own columns (a one-head model: the plain softmax)."""
    return torch.cat([logits[:, s].softmax(1) for s in output_slices(target).values()], 1)


@torch.no_grad()
def predict_views(model: nn.Module, x: torch.Tensor, tta: tuple[str, ...], target: str,
                  precision: str = "auto") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits of the original view, view name -> per-head softmax) for the original view
    (ORIGINAL) and every ``tta`` view; ``target`` is the model's head, or ``all``."""
    for name in tta:
        if name not in TTA_VIEWS:
            raise ValueError(f"unknown TTA view {name!r}; valid: {', '.join(TTA_VIEWS)}")
    with autocast(x.device, precision):
        logits = model(x).float()
        views = {ORIGINAL: softmax_by_head(logits, target)}
        for name in tta:
            views[name] = softmax_by_head(model(TTA_VIEWS[name](x)).float(), target)
    return logits, views


def predict_batch(model: nn.Module, x: torch.Tensor, tta: tuple[str, ...], target: str,
                  precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the original view, per-head softmax averaged over original + TTA views)."""
    logits, views = predict_views(model, x, tta, target, precision)
    return logits, mean_of_views(list(views.values()))


def mean_of_views(views: list):
    """The TTA average, summed in view order (so OOF tables and eval predictions agree)."""
    total = views[0]
    for v in views[1:]:
        total = total + v
    return total / len(views)


def score(target: str, probs: np.ndarray, scored: np.ndarray) -> tuple[float, float]:
    """(macro F1, accuracy) of ``probs`` against the scored labels: a head's own classes, or
    for a joint model the 18 competition classes its heads combine into (the real metric)."""
    preds = np.stack([probs[:, s].argmax(1) for s in output_slices(target).values()], 1)
    scored = scored.reshape(len(scored), -1)
    if target == ALL:   # the 18-class code of the heads' labels
        names = list(output_slices(target))
        pred, truth = (encode(*(dict(zip(names, a.T))[h] for h in ("mask", "gender", "age"))) for a in (preds, scored))
        n_cls = NUM_CLASSES
    else:
        pred, truth, n_cls = preds[:, 0], scored[:, 0], target_heads(target)[0].num_classes
    return macro_f1(truth, pred, n_cls), accuracy(truth, pred)


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: nn.Module, device: torch.device, target: str,
             *, tta: tuple[str, ...] = ("hflip",), precision: str = "auto") -> EvalResult:
    """Validation of a model of ``target`` (a head, or ``all``) on ``loader``."""
    model.eval()
    losses, views, scored = [], [], []
    for x, y, s in loader:
        x, y = batch_to(x, device), y.to(device, non_blocking=True)
        logits, v = predict_views(model, x, tta, target, precision)
        losses.append(loss_fn(logits, y).item() * len(y))
        views.append({k: p.cpu().numpy() for k, p in v.items()})
        scored.append(s.numpy())
    by_view = {k: np.concatenate([v[k] for v in views]) for k in views[0]}
    probs_np, s_np = mean_of_views(list(by_view.values())), np.concatenate(scored)
    f1, acc = score(target, probs_np, s_np)
    return EvalResult(sum(losses) / len(s_np), f1, acc, probs_np, by_view)
