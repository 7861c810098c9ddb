"""Albumentations presets (the recipe's per head, and the joint model's), scaled by one strength
knob. A head's row in core.labels.TABLE names its preset (``augment``).

strength 0 = no augmentation, 1 = the recipe's magnitudes, 2 = the maximum the search
uses. Every pipeline ends with resize + normalise from the model's own data config.
"""
from __future__ import annotations

from typing import Callable

import albumentations as A
from albumentations.pytorch import ToTensorV2

from core.labels import target_row


def _p(s: float) -> float:
    return min(1.0, 0.5 * s)   # the recipe applies each transform half of the time


def mask_preset(s: float) -> list:
    return [A.Perspective(scale=(0.02 * s, 0.05 * s), p=_p(s)),
            A.Rotate(limit=10 * s, p=_p(s)),
            A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=_p(s)),
            A.HueSaturationValue(hue_shift_limit=10 * s, sat_shift_limit=20 * s, val_shift_limit=0, p=_p(s))]


def age_preset(s: float) -> list:
    return [A.Rotate(limit=10 * s, p=_p(s)),
            A.RandomGridShuffle(grid=(2, 2), p=min(1.0, 0.25 * s)),
            A.Perspective(scale=(0.02 * s, 0.05 * s), p=_p(s)),
            A.GaussNoise(std_range=(0.02 * s, 0.05 * s), p=_p(s))]


def gender_preset(s: float) -> list:
    return [A.Rotate(limit=10 * s, p=_p(s)),
            A.Perspective(scale=(0.02 * s, 0.05 * s), p=_p(s)),
            A.GaussNoise(std_range=(0.02 * s, 0.05 * s), p=_p(s))]


def joint_preset(s: float) -> list:
    """One backbone for every head (ours, not the recipe's): flips, small shifts and zooms, light
    and noise; no grid shuffle (it moves the mask) and no hue shift (mask colours carry meaning)."""
    return [A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-10 * s, 10 * s), scale=(1 - 0.1 * s, 1 + 0.1 * s),
                     translate_percent=(-0.05 * s, 0.05 * s), p=_p(s)),
            A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=_p(s)),
            A.GaussNoise(std_range=(0.02 * s, 0.05 * s), p=_p(s))]


PRESETS: dict[str, Callable[[float], list]] = {"mask": mask_preset, "age": age_preset, "gender": gender_preset,
                                                "joint": joint_preset}
MAX_STRENGTH = 2.0


def finish(img_size: int, mean, std) -> list:
    return [A.Resize(img_size, img_size), A.Normalize(mean=mean, std=std), ToTensorV2()]


def train_transform(head: str, strength: float, img_size: int, mean, std, seed: int | None = None) -> A.Compose:
    """Args:
        head: a target (core.labels.TARGETS); its row names its preset.
        strength: 0..MAX_STRENGTH; 0 gives exactly the eval transform.
        img_size: output side in pixels.
        mean, std: normalisation of the model's data config (timm.data.resolve_data_config).
        seed: seeds the augmentation draws (reproducible runs; None = random).
    """
    preset = target_row(head).augment
    if not 0 <= strength <= MAX_STRENGTH:
        raise ValueError(f"augmentation strength must lie in 0..{MAX_STRENGTH}, got {strength}")
    aug = PRESETS[preset](strength) if strength > 0 else []
    return A.Compose(aug + finish(img_size, mean, std), seed=seed)


def eval_transform(img_size: int, mean, std) -> A.Compose:
    return A.Compose(finish(img_size, mean, std))
