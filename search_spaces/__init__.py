"""One Optuna define-by-run search space per head, plus the recipe's defaults (one table)."""
from .recipe import RECIPE, SMOKE, HeadRecipe, recipe_config, recipe_point
from .spaces import SPACES, search_space, with_backbones

__all__ = ["RECIPE", "SMOKE", "HeadRecipe", "recipe_config", "recipe_point", "SPACES", "search_space", "with_backbones"]
