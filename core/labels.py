"""Class encoding of the competition (class = mask*6 + gender*3 + age) and the head table.

``TABLE`` has one row per study target: the three heads and ``all`` (one model, a classifier
per head). A row holds everything that differs between targets: its classes and label column,
its weight in the 18-class code, how the competition recipe trains it, and the names of its
augmentation preset (trainables.augment.PRESETS) and search space (search_spaces.spaces.SPACES),
named because those objects live in the layers above. Adding or changing a head is one row;
everything else (datasets, losses, search spaces, the ensemble) looks the row up here.
"""
from __future__ import annotations

from dataclasses import dataclass


# image kind (file stem) -> mask state: wear 0, incorrect 1, not wear 2
IMAGE_KINDS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0,
               "incorrect_mask": 1, "normal": 2}
GENDERS = {"male": 0, "female": 1}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
COMPETITION_OLD_AGE = 60   # scoring always uses <30 / 30-59 / >=60
YOUNG_AGE_LIMIT = 30
NUM_CLASSES = 18
SEED = 777   # the recipe's seed: fold assignment, weight init, the search sampler, the demo data


@dataclass(frozen=True)
class Backbone:
    """What a model is built from: a timm architecture, its input side and its starting weights."""
    model: str                # timm model name
    img_size: int             # square input side in pixels
    pretrained: str = "none"  # none (from scratch) | hub (timm's download) | an installed weights
                              # package (lite0: trainables/weights.py) | a weights file


# Named backbones: what a head's row, `run --backbone` and a backbone search name.
BACKBONES: dict[str, Backbone] = {
    # the competition recipe: ImageNet EfficientNet-B3 at 224 px from timm's hub (GPU, internet)
    "b3-224-hub": Backbone("efficientnet_b3", 224, "hub"),
    # ImageNet EfficientNet-Lite0 from its pip package (offline); tf_: the file's own padding
    "lite0-64": Backbone("tf_efficientnet_lite0", 64, "lite0"),
    "lite0-96": Backbone("tf_efficientnet_lite0", 96, "lite0"),
    "lite0-112": Backbone("tf_efficientnet_lite0", 112, "lite0"),
    "lite0-128": Backbone("tf_efficientnet_lite0", 128, "lite0"),
    # from scratch, small and fast on a CPU
    "resnet10t-64": Backbone("resnet10t", 64),
}


RUN_BACKBONE = "lite0-96"   # `run`'s default for every target: measured best on a CPU budget (benchmarks/README.md)


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name]


@dataclass(frozen=True)
class Recipe:
    """How the competition recipe trains a model of a target (search_spaces.recipe_config)."""
    lr: float                 # learning rate
    loss: str                 # loss name (trainables.losses.LOSSES)
    epochs: int               # epochs per fold (the recipe's cv budget)
    old_from: int = COMPETITION_OLD_AGE   # training age boundary of "old" (scoring always uses 60)
    optimizer: str = "adam"   # adam | adamw
    weight_decay: float = 0.0
    warmup: float = 0.0       # share of the schedule spent warming the learning rate up
    backbone: str = "b3-224-hub"   # a BACKBONES name: the recipe fine-tunes ImageNet EfficientNet-B3


@dataclass(frozen=True)
class Head:
    """One row of the head table: a head, or the joint target (``parts``: the heads it predicts)."""
    name: str                 # mask | gender | age | all
    column: str               # label column in the training table ("" for the joint target)
    classes: tuple[str, ...]  # class names, index = label (() for the joint target)
    weight: int               # multiplier in the 18-class code (0 for the joint target)
    recipe: Recipe            # the recipe's training settings
    augment: str              # augmentation preset, a key of trainables.augment.PRESETS
    space: str                # search space, a key of search_spaces.spaces.SPACES
    parts: tuple[str, ...] = ()
    run_backbone: str = RUN_BACKBONE   # `run`'s default backbone (a BACKBONES name), sized for a
                                       # CPU budget by benchmarks/quality.py (README: Quality)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# A study target is one head, or ALL: one model with a shared backbone and one classifier per
# head (multi-task). Every head then learns from every epoch, which is what a small CPU budget
# needs; the heads' outputs are still separate distributions, so voting and the 18-class join
# treat a joint model's slice exactly like a one-head model. Its recipe is ours, not the
# competition's (whose heads fine-tuned pretrained models one by one): one backbone from
# scratch for every head, so the learning rate of training from scratch, and AdamW.
ALL = "all"
TABLE: dict[str, Head] = {h.name: h for h in (
    Head("mask", "mask", ("wear", "incorrect", "not_wear"), 6, Recipe(lr=3e-4, loss="ce", epochs=10),
         augment="mask", space="head"),
    Head("gender", "gender", ("male", "female"), 3, Recipe(lr=1e-4, loss="ce", epochs=10),
         augment="gender", space="head"),
    Head("age", "age_group", ("<30", "30-59", ">=60"), 1, Recipe(lr=1e-4, loss="focal", epochs=4, old_from=59),
         augment="age", space="head_and_age_boundary"),
    Head(ALL, "", (), 0, Recipe(lr=1e-3, loss="ce", epochs=10, old_from=59, optimizer="adamw", weight_decay=0.05,
                                 warmup=0.03),
         augment="joint", space="head_and_age_boundary", parts=("mask", "gender", "age")),
)}
HEADS: dict[str, Head] = {n: h for n, h in TABLE.items() if not h.parts}   # the three heads
TARGETS = tuple(TABLE)


def get_head(name: str) -> Head:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}")
    return HEADS[name]


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown head {target!r}; valid: {', '.join(TARGETS)} "
                         f"({ALL} = one model with a classifier per head)")


def target_row(target: str) -> Head:
    """The head table's row of ``target`` (a head, or ``all``)."""
    check_target(target)
    return TABLE[target]


def target_heads(target: str) -> tuple[Head, ...]:
    """The heads a model of ``target`` predicts, in output order."""
    row = target_row(target)
    return tuple(HEADS[p] for p in row.parts) if row.parts else (row,)


def output_slices(target: str) -> dict[str, slice]:
    """head name -> its columns in the model's output (a one-head model: all of them)."""
    out, start = {}, 0
    for h in target_heads(target):
        out[h.name] = slice(start, start + h.num_classes)
        start += h.num_classes
    return out


def num_outputs(target: str) -> int:
    return sum(h.num_classes for h in target_heads(target))


def age_group(age, old_from: int = COMPETITION_OLD_AGE):
    """0 (<30), 1 (30..old_from-1), 2 (>=old_from); works on ints and arrays."""
    import numpy as np   # heavy for what only reads the head table (the CLI's --help)
    age = np.asarray(age)
    out = np.where(age < YOUNG_AGE_LIMIT, 0, np.where(age < old_from, 1, 2))
    return int(out) if out.ndim == 0 else out


def encode(mask, gender, age_grp):
    """Heads -> 18-class label (scalars or arrays)."""
    import numpy as np   # heavy, as in age_group
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age_grp)


def decode(label):
    """18-class label -> (mask, gender, age_group)."""
    import numpy as np   # heavy, as in age_group
    label = np.asarray(label)
    if np.any((label < 0) | (label >= NUM_CLASSES)):
        raise ValueError(f"class labels must lie in 0..{NUM_CLASSES - 1}")
    return label // 6, (label // 3) % 2, label % 3


def class_names() -> list[str]:
    """Readable names of the 18 classes, index = class."""
    m, g, a = (HEADS[h].classes for h in ("mask", "gender", "age"))
    return [f"{m[i // 6]}/{g[(i // 3) % 2]}/{a[i % 3]}" for i in range(NUM_CLASSES)]
