"""The competition recipe's settings per head, from the head table (core.labels.TABLE).

``recipe_config`` turns a row's recipe into a full ``TrialConfig`` (what every head shares, batch
and seed, are TrialConfig's own defaults; the row's backbone gives model, image size and starting
weights: the recipe fine-tunes timm's ImageNet EfficientNet-B3); ``recipe_point`` is
the same config as the values the search space suggests, so Optuna evaluates the recipe first
(``points_to_evaluate``) and a study is never worse than the recipe.
"""
from __future__ import annotations

from dataclasses import asdict

from core.labels import TABLE, Recipe, get_backbone, target_row
from trainables.config import TrialConfig

from .spaces import search_space

HeadRecipe = Recipe   # the name this package used before the head table moved to core.labels
RECIPE: dict[str, Recipe] = {name: row.recipe for name, row in TABLE.items()}
# CPU smoke runs: a tiny timm model from scratch (nothing downloads), small images, 1 epoch
SMOKE = dict(model="test_efficientnet", pretrained="none", img_size=32, batch_size=32, epochs=1)


def recipe_config(head: str, *, backbone: str | None = None, **overrides) -> TrialConfig:
    """The recipe's TrialConfig for ``head`` on its row's backbone, or on the named ``backbone``
    (core.labels.BACKBONES); ``overrides`` replace single fields (validated once, as a whole: the
    hub weights of the recipe's model are not checked for a smoke model)."""
    fields = asdict(target_row(head).recipe)
    bb = get_backbone(backbone or fields["backbone"])
    del fields["backbone"]   # a name, not a TrialConfig field: bb's fields replace it
    return TrialConfig(**(fields | asdict(bb) | {"head": head} | overrides))


def recipe_point(head: str) -> dict:
    """The recipe as a point of ``search_space(head)``: the space itself, run on a trial that
    answers every suggestion with the recipe's value, says which parameters it asks for."""
    from optuna.trial import FixedTrial   # heavy: only a search needs Optuna
    trial = FixedTrial(asdict(recipe_config(head)))
    search_space(head)(trial)
    return dict(trial.params)
