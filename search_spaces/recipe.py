"""The competition recipe's settings per head: heads are rows, not copies.

``recipe_config`` turns a row into a full ``TrialConfig``; ``recipe_point`` is the same row as
the values the search space suggests, so Optuna evaluates the recipe first
(``points_to_evaluate``) and a study is never worse than the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from trainables.config import TrialConfig


@dataclass(frozen=True)
class HeadRecipe:
    lr: float          # learning rate
    loss: str          # loss name (trainables.losses.LOSSES)
    epochs: int        # epochs per fold (the recipe's cv budget)
    old_from: int = 60  # training age boundary (age head only; scoring always uses 60)
    optimizer: str = "adam"
    weight_decay: float = 0.0


RECIPE: dict[str, HeadRecipe] = {
    "age": HeadRecipe(lr=1e-4, loss="focal", epochs=4, old_from=59),
    "mask": HeadRecipe(lr=3e-4, loss="ce", epochs=10),
    "gender": HeadRecipe(lr=1e-4, loss="ce", epochs=10),
    # not the competition's (its heads fine-tuned pretrained models one by one): one backbone
    # from scratch for every head, so the learning rate of training from scratch and AdamW
    "all": HeadRecipe(lr=1e-3, loss="ce", epochs=10, old_from=59, optimizer="adamw", weight_decay=0.05),
}
# shared by every head: the recipe's model, fine-tuned from timm's ImageNet weights, size, batch, seed
BASE = dict(model="efficientnet_b3", pretrained="hub", img_size=224, batch_size=64, seed=777,
            gamma=2.0, smoothing=0.1, strength=1.0)
# CPU smoke runs: a tiny timm model from scratch (nothing downloads), small images, 1 epoch
SMOKE = dict(model="test_efficientnet", pretrained="none", img_size=32, batch_size=32, epochs=1)


def recipe_config(head: str, **overrides) -> TrialConfig:
    """The recipe's TrialConfig for ``head``; ``overrides`` replace single fields."""
    if head not in RECIPE:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(RECIPE)}")
    r = RECIPE[head]
    fields = dict(BASE, head=head, lr=r.lr, loss=r.loss, epochs=r.epochs, old_from=r.old_from,
                  optimizer=r.optimizer, weight_decay=r.weight_decay)
    return TrialConfig(**(fields | overrides))


def recipe_point(head: str) -> dict:
    """The recipe as a point of ``search_space(head)`` (parameter name -> value)."""
    r = RECIPE[head]
    point = {"lr": r.lr, "loss": r.loss, "strength": BASE["strength"]}
    if r.loss == "focal":
        point["gamma"] = BASE["gamma"]
    if r.loss == "label_smoothing":
        point["smoothing"] = BASE["smoothing"]
    if head in ("age", "all"):
        point["old_from"] = r.old_from
    return point
