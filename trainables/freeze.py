"""A pretrained backbone's first layers kept as they are (``TrialConfig.freeze``): no gradient to
compute for them, so more steps fit in a budget (benchmarks/README.md measures what it buys).

The layers are timm's parameter groups (``model.group_matcher(coarse=True)``): the stem first,
then each stage, the classifier last; ``freeze`` counts them from the input. A frozen group gets
no gradient (autograd starts at the first layer that trains, so the frozen ones cost a forward
pass only) and its batch norms read their pretrained statistics, not the batch's (``train_mode``):
updated by a batch they would drift from the weights they were fitted with.
"""
from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def parameter_groups(model: nn.Module) -> list[list[str]]:
    """``model``'s parameter names by timm's coarse groups, input first, classifier last."""
    import timm   # heavy: this module's train_mode reaches every importer of trainables.loop (preprocess too)
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise ValueError(f"--freeze: {type(model).__name__} names no parameter groups (timm's group_matcher); "
                         "pick another --model or --freeze 0")
    groups = timm.models.group_parameters(model, matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def freeze(model: nn.Module, n: int) -> nn.Module:
    """``model`` with its first ``n`` parameter groups set not to train (0: all train)."""
    if n < 0:
        raise ValueError(f"--freeze {n}: give the number of parameter groups kept as loaded (0: none)")
    if n == 0:
        return model
    groups = parameter_groups(model)
    if n >= len(groups):
        raise ValueError(f"--freeze {n}: {type(model).__name__} has {len(groups)} parameter groups (the stem, each "
                         f"stage, the classifier); freeze at most {len(groups) - 1}, so the classifier trains")
    frozen = {name for group in groups[:n] for name in group}
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return model


@cache   # every TrialConfig with freeze set is checked: a run's start reads each of its studies' models
def check_freeze(model_name: str, n: int) -> None:
    """``freeze``'s refusal for timm ``model_name``, before anything trains: built on the meta device
    (no memory, no weights: a fraction of a second)."""
    import timm
    if n:
        with torch.device("meta"):
            freeze(timm.create_model(model_name, num_classes=3), n)


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, its frozen batch norms left in eval mode (their running statistics kept).
    A batch norm is frozen where its learned scale is (every norm of timm's CNNs has one)."""
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()
    return model


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer steps: those ``freeze`` left training."""
    return [p for p in model.parameters() if p.requires_grad]
