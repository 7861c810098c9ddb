"""The typed configs built at the top of the trainable from Tune's ``config`` dict.

``TrialConfig`` is what defines a model and how it is trained (saved with every model file);
``RunContext`` is where the trial reads and logs (paths, MLflow), never saved with a model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from core.labels import SEED, TARGETS, output_slices
from results.run_schema import EXPERIMENT

from .pretrained import is_none
from .schedule import SHAPES

FULL_DATA = -1   # fold value of a model trained on all training persons (no validation)
FORWARD_COST = 0.5   # predicting an image (decode, forward, logging) as a share of a training step
TTA_VIEW_NAMES = ("hflip",)   # test-time views beside the image itself (their functions: loop.TTA_VIEWS);
                              # named here, torch-free, because the budget costs them
PREDICTED_VIEWS = 1 + len(TTA_VIEW_NAMES)   # an image is predicted as itself and in each view
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AGE_HEADS = ("softmax", "ordinal")


@dataclass(frozen=True)
class TrialConfig:
    head: str                       # mask | gender | age | all (core.labels.TARGETS)
    fold: int = 0                   # validation fold, or FULL_DATA (-1) to train on everything
    folds: int = 5                  # K of the person-level fold assignment
    search_folds: int = 1           # folds fold, fold+1, ... trained side by side; metrics averaged
    fold_seed: int = SEED           # seed of the fold assignment
    model: str = "efficientnet_b3"  # any timm model name
    pretrained: str = "none"        # none (from scratch; "" in older files) | hub (timm's download)
                                    # | a local weights file (trainables/pretrained.py)
    img_size: int = 224             # square input size in pixels
    batch_size: int = 64
    epochs: int = 10
    lr: float = 1e-4
    optimizer: str = "adam"         # adam | adamw
    schedule: str = "cosine"        # cosine | linear decay to 0 over the trial's progress: steps done
                                    # or, under a deadline, time used (trainables/schedule.py)
    warmup: float = 0.0             # share of the progress spent warming the learning rate up
    weight_decay: float = 0.0
    loss: str = "ce"                # trainables.losses.LOSSES
    gamma: float = 2.0              # focal loss focusing parameter
    smoothing: float = 0.1          # label smoothing amount
    class_weights: bool = False     # weight the loss by inverse class frequency
    strength: float = 1.0           # augmentation strength: 0 none, 1 the recipe, 2 max
    old_from: int = 60              # training age boundary of "old" (age head; scoring uses 60)
    age_head: str = "softmax"       # softmax | ordinal: the age head's classifier where the model has
                                    # one (trainables/ordinal_head.py: cumulative logits, one score)
    freeze: int = 0                 # the pretrained backbone's first N parameter groups (the stem,
                                    # then each stage) kept as loaded (trainables/freeze.py); 0: all train
    seed: int = SEED
    num_workers: int = -1           # DataLoader worker processes; -1: the trial's CPUs but one
    precision: str = "auto"         # auto | bf16 | fp16 | fp32: autocast where the hardware runs it
                                    # fast (trainables.loop.precision_for), else fp32
    max_batches: int = 0            # cap batches per epoch (0 = all; smoke runs and benchmarks)
    val_from: int = 1               # first epoch validated (with TTA); earlier ones only train. The
                                    # last epoch, and one a deadline makes the last, always are

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        """Build from a dict that may hold other keys too (Tune's config); unknown keys are ignored."""
        names = {f.name: f.type for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for k, v in kwargs.items():  # Optuna/JSON may turn ints into floats and back
            if names[k] == "int" and isinstance(v, float) and v.is_integer():
                kwargs[k] = int(v)
            elif names[k] == "float" and isinstance(v, int) and not isinstance(v, bool):
                kwargs[k] = float(v)
        return cls(**kwargs)

    @property
    def has_validation(self) -> bool:
        return self.fold != FULL_DATA


def _choice(what: str, value: str, valid, plural: str = "") -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {plural or what + 's'}: {', '.join(valid)}")


def check_model_name(name: str) -> None:
    import timm  # heavy (torch): imported when a config is built, not by every importer of PRECISIONS
    if not timm.is_model(name):   # a tagged name (resnet50.a1_in1k) is a model too: list_models() omits tags
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() "
                         f"(similar: {', '.join(close) or 'none'})")


def validate(cfg: TrialConfig) -> None:
    """Clear errors for names and ranges, before any model is built."""
    from .losses import LOSSES  # heavy (torch), as check_model_name
    _choice("head", cfg.head, TARGETS)
    _choice("loss", cfg.loss, sorted(LOSSES), "losses")
    _choice("optimizer", cfg.optimizer, ("adam", "adamw"))
    _choice("schedule", cfg.schedule, SHAPES)
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("age head", cfg.age_head, AGE_HEADS)
    if cfg.age_head != AGE_HEADS[0] and "age" not in output_slices(cfg.head):
        raise ValueError(f"age head {cfg.age_head!r}: a {cfg.head} model has no age output (give it to head age or all)")
    if cfg.num_workers < -1:
        raise ValueError(f"num_workers {cfg.num_workers}: use 0 or more DataLoader workers, or -1 for the trial's CPUs but one")
    check_model_name(cfg.model)
    if cfg.freeze:
        check_frozen(cfg.model, cfg.pretrained, cfg.freeze, cfg.model)
    if not (cfg.fold == FULL_DATA or 0 <= cfg.fold < cfg.folds):
        raise ValueError(f"fold {cfg.fold} is outside 0..{cfg.folds - 1} (or {FULL_DATA} for all data)")
    if not 1 <= cfg.search_folds <= cfg.folds:
        raise ValueError(f"search_folds {cfg.search_folds} must lie in 1..{cfg.folds} (the number of folds)")
    for name in ("img_size", "batch_size", "epochs", "val_from"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.warmup < 1:
        raise ValueError(f"warmup {cfg.warmup}: the share of the schedule spent warming up must lie in [0, 1)")
    if not 0 <= cfg.strength <= 2:
        raise ValueError(f"augmentation strength must lie in 0..2, got {cfg.strength}")
    if not 30 < cfg.old_from <= 100:
        raise ValueError(f"old_from {cfg.old_from}: the old boundary must lie in 31..100")


def check_frozen(model: str, pretrained: str, n: int, who: str) -> None:
    """``--freeze n`` for timm ``model`` starting from ``pretrained``: a ValueError naming ``who``
    (a model, a run's target) where it starts from scratch, or n is below 0 or reaches the classifier."""
    from .freeze import check_freeze  # heavy (torch, timm), as check_model_name
    if n > 0 and is_none(pretrained):
        raise ValueError(f"--freeze {n} keeps layers as they were loaded; {who} trains from scratch (--pretrained "
                         f"{pretrained or 'none'}): its layers are random: give pretrained weights or --freeze 0")
    check_freeze(model, n)


@dataclass(frozen=True)
class RunContext:
    """Where a trial reads data and logs; absolute paths because trials chdir."""
    data: str                       # DATA directory
    workspace: str                  # workspace root
    tracking_uri: str = ""          # "" = no MLflow logging (plain loops, benchmarks)
    experiment: str = EXPERIMENT
    study: str = ""
    phase: str = "search"           # search | cv | full
    parent_run_id: str = ""
    deadline: float = 0.0           # unix time by which training must end (0 = none; run --budget)
    labels: str = ""                # hash of the label table the trial trains on (core.label_table)
    pins: dict = field(default_factory=dict)   # the study's input hashes (orchestrator.study.pins): the
                                               # fold file the trial reads, its MLflow tags

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunContext":
        return cls(**d)
