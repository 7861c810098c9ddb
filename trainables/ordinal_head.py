"""A cumulative-logit (ordinal) classifier for an ordered head: age's groups (< 30, 30-59, >= 60).

A softmax head gives each group a free logit, so nothing ties "30-59" to lying between the two
others. This head scores an image once, s, and learns K-1 increasing cut points c_k:
P(group > k) = sigmoid(s - c_k), and each group's probability is the difference of two of those
(the proportional-odds model). A face that looks older moves along one axis, and the >= 60 group
learns from every face that looks older than 30 too.

The classifier returns each group's *log probability* where a softmax head returns logits: the
probabilities sum to 1, so a softmax of them gives them back exactly. The loss, the TTA average,
the calibration offsets and every reader of a head's output columns work unchanged.
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

CUT_SCALE = 10.0   # the cut parameters' unit: a scalar moves about lr per Adam step, so at a fine-tuning
                   # rate (3e-4) a cut in plain units would need thousands of steps to move one logit
FIRST_GAP = 4.0    # the groups' starting width in logits: a middle group between cuts g apart can
                   # never be more likely than tanh(g / 4) (0.24 at g = 1: never the argmax)
SCORE_SCALE = FIRST_GAP   # the score is the linear output times this: one unit of it crosses a group, as
                          # a unit of a softmax logit changes a prediction; unscaled, the weights must grow
                          # until the score spans the cuts, and the head lags a softmax head for hundreds of steps


class OrdinalClassifier(nn.Module):
    """A linear classifier whose ``ordinal`` output columns are cumulative-logit groups.

    Its linear layer gives the other heads' logits and one score for the ordinal head (K - 1 fewer
    outputs than the softmax classifier it replaces); ``cuts`` holds the first cut point and the
    softplus-gaps to the next ones (in CUT_SCALE units), so the cut points always increase. They
    start FIRST_GAP apart around 0, where a fresh score lies: every group starts likely somewhere."""

    def __init__(self, in_features: int, out_features: int, ordinal: slice):
        super().__init__()
        self.start, self.groups = ordinal.start, ordinal.stop - ordinal.start
        if self.groups < 2:
            raise ValueError(f"an ordinal head needs 2 or more ordered groups, got {self.groups}")
        self.linear = nn.Linear(in_features, out_features - (self.groups - 1))
        first = -FIRST_GAP * (self.groups - 2) / 2
        gap = math.log(math.expm1(FIRST_GAP / CUT_SCALE))   # softplus(gap) * CUT_SCALE = FIRST_GAP
        self.cuts = nn.Parameter(torch.tensor([first / CUT_SCALE] + [gap] * (self.groups - 2)))

    def gaps(self) -> torch.Tensor:
        return F.softplus(self.cuts[1:]) * CUT_SCALE

    def cut_points(self) -> torch.Tensor:
        return torch.cumsum(torch.cat([self.cuts[:1] * CUT_SCALE, self.gaps()]), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        score = SCORE_SCALE * z[:, self.start:self.start + 1]
        return torch.cat([z[:, :self.start], self.log_probs(score).to(z.dtype), z[:, self.start + 1:]], 1)

    def log_probs(self, score: torch.Tensor) -> torch.Tensor:
        """[B, K] log P(group k) of scores [B, 1], in log space throughout: a difference of two
        sigmoids rounds to 0 for a face scored far from its group, and a floor under it would leave
        that face no gradient, where a softmax head's loss pulls hardest. fp32 where autocast gives
        bf16 (8 bits of mantissa would round the groups' log probabilities coarsely)."""
        a = score.float() - self.cut_points()   # [B, K-1]: logit of P(group > k)
        first, last = F.logsigmoid(-a[:, :1]), F.logsigmoid(a[:, -1:])
        # sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), and b - a = -gap
        middle = F.logsigmoid(a[:, :-1]) + F.logsigmoid(-a[:, 1:]) + torch.log(-torch.expm1(-self.gaps()))
        return torch.cat([first, middle, last], 1)


def with_ordinal_head(model: nn.Module, ordinal: slice) -> nn.Module:
    """``model`` (a timm model) with its linear classifier replaced by an OrdinalClassifier
    (freshly initialised, as a new classifier always is: no weights are ever loaded into one)."""
    old, name = model.get_classifier(), classifier_name(model)
    parent, _, attr = name.rpartition(".")
    new = OrdinalClassifier(old.in_features, old.out_features, ordinal)
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def classifier_name(model: nn.Module) -> str:
    """Where ``model``'s one linear classifier is, which an ordinal head replaces; a ValueError
    naming the way out where it has another kind (a Conv2d: dla) or two (distilled models)."""
    old = model.get_classifier()
    if not isinstance(old, nn.Linear):
        raise ValueError(f"an ordinal age head replaces a linear classifier; {type(model).__name__}'s is "
                         f"{type(old).__name__}: pick another --model or --age-head softmax")
    name = model.pretrained_cfg.get("classifier")
    if not isinstance(name, str):
        raise ValueError(f"an ordinal age head needs a model with one classifier; {type(model).__name__} has "
                         f"{name!r}: pick another --model or --age-head softmax")
    return name


def check_ordinal_model(model_name: str) -> None:
    """classifier_name's refusal for timm ``model_name``, before anything trains: built on the meta
    device (no memory, no weights: a fraction of a second)."""
    with torch.device("meta"):
        classifier_name(timm.create_model(model_name, num_classes=3))
