"""Losses chosen by name: one small module per idea, one name->factory dict.

Every factory takes the class count, optional class weights and the config's loss
parameters, so a loss added to ``LOSSES`` is picked up by the search space and tests.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from core.labels import ALL, output_slices, target_heads


class FocalLoss(nn.Module):
    """Cross-entropy scaled by (1 - p_true)^gamma: easy, frequent examples weigh less."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits, target):
        logp = F.log_softmax(logits, dim=1)
        ce = F.nll_loss(logp, target, weight=self.weight, reduction="none")
        p_true = logp.gather(1, target[:, None]).squeeze(1).exp()
        return ((1 - p_true) ** self.gamma * ce).mean()


class F1Loss(nn.Module):
    """1 - soft macro F1 over the batch (probabilities instead of hard predictions)."""

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None, eps: float = 1e-7):
        super().__init__()
        self.num_classes, self.eps = num_classes, eps
        self.register_buffer("weight", weight)

    def forward(self, logits, target):
        prob = logits.softmax(dim=1)
        onehot = F.one_hot(target, self.num_classes).to(prob.dtype)
        tp = (prob * onehot).sum(0)
        f1 = 2 * tp / (prob.sum(0) + onehot.sum(0) + self.eps)
        w = torch.ones_like(f1) if self.weight is None else self.weight
        return 1 - (f1 * w).sum() / w.sum()


def _ce(num_classes, weight, gamma, smoothing):
    return nn.CrossEntropyLoss(weight=weight)


def _focal(num_classes, weight, gamma, smoothing):
    return FocalLoss(gamma=gamma, weight=weight)


def _smooth(num_classes, weight, gamma, smoothing):
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)


def _f1(num_classes, weight, gamma, smoothing):
    return F1Loss(num_classes, weight=weight)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce, "focal": _focal, "label_smoothing": _smooth, "f1": _f1,
}


def build_loss(name: str, num_classes: int, *, weight: torch.Tensor | None = None,
               gamma: float = 2.0, smoothing: float = 0.1) -> nn.Module:
    """Args:
        name: a key of LOSSES.
        num_classes: classes of the head.
        weight: optional per-class weights (e.g. inverse frequency).
        gamma: focal loss focusing parameter.
        smoothing: label smoothing amount.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name](num_classes, weight, gamma, smoothing)


class PerHeadLoss(nn.Module):
    """A joint model's loss: each head's own loss on its output columns, summed.
    ``target`` is [B, heads], one column per head in the order of ``slices``."""

    def __init__(self, losses: dict[str, nn.Module], slices: dict[str, slice]):
        super().__init__()
        self.losses, self.slices = nn.ModuleDict(losses), dict(slices)

    def forward(self, logits, target):
        return sum(self.losses[h](logits[:, s], target[:, i]) for i, (h, s) in enumerate(self.slices.items()))


def build_target_loss(cfg, train_targets) -> nn.Module:
    """The loss of ``cfg.head`` (a TrialConfig); a joint model gets one per head, summed.
    ``train_targets`` (the training rows' labels) give the class weights when they are on."""
    heads = target_heads(cfg.head)
    targets = np.asarray(train_targets).reshape(len(train_targets), -1)

    def one(i: int) -> nn.Module:
        n = heads[i].num_classes
        weight = inverse_frequency(targets[:, i], n) if cfg.class_weights else None
        return build_loss(cfg.loss, n, weight=weight, gamma=cfg.gamma, smoothing=cfg.smoothing)
    if cfg.head != ALL:
        return one(0)
    return PerHeadLoss({h.name: one(i) for i, h in enumerate(heads)}, output_slices(ALL))


def inverse_frequency(labels, num_classes: int) -> torch.Tensor:
    """Class weights ~ 1 / count, mean 1 (a class missing from ``labels`` counts as 1)."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_classes).clamp(min=1).float()
    w = 1.0 / counts
    return w * num_classes / w.sum()
