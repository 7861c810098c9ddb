"""One head on one fold: the parts a trial builds, one epoch step, and its resumable state.

Shared by the Tune trainable (``trainables.trainable``) and plain loops (``fit``), so a
benchmark's "plain loop" runs exactly what a trial runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from core.workspace import Workspace

from .config import TrialConfig
from .data import HeadData, build_loaders, load_head_data, split_index
from .freeze import trainable
from .loop import (
    EvalResult,
    cap_gpu_memory,
    deterministic,
    device_of,
    evaluate,
    ray_gpu_share,
    to_device,
    train_one_epoch,
)
from .losses import build_target_loss
from .models import build_model, data_config
from .schedule import BudgetSchedule

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class Parts:
    cfg: TrialConfig
    data: HeadData
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: BudgetSchedule
    train_loader: object
    val_loader: object | None
    device: torch.device

    @property
    def val_paths(self) -> np.ndarray:
        return self.data.paths[split_index(self.data, self.cfg.fold)[1]]


@dataclass(frozen=True)
class TrialState:
    epoch: int = 0           # epochs completed
    best_f1: float = -1.0    # best validation macro F1 so far
    best_epoch: int = 0      # epoch (1-based) of best_f1; full-data runs: the last epoch
    run_id: str = ""         # the trial's MLflow run, so a resumed trial continues it


@dataclass(frozen=True)
class EpochResult:
    state: TrialState
    metrics: dict            # train_loss (+ val_f1, val_loss, val_acc with validation)
    improved: bool           # this epoch is the new best (always true without validation)
    val: EvalResult | list[EvalResult] | None   # a list when a trial averages several folds


def build_parts(cfg: TrialConfig, ws: Workspace, *, pins: dict | None = None) -> Parts:
    """``pins``: the study's inputs (orchestrator.study.pins): its split, checked crops and labels."""
    device = device_of()
    deterministic(device)   # before the model reaches the card: cuBLAS reads its setting then
    cap_gpu_memory(device, ray_gpu_share())
    torch.manual_seed(cfg.seed)
    data = load_head_data(cfg, ws, pins=pins)
    model = build_model(cfg)
    dc = data_config(model, cfg.img_size)
    train, val = build_loaders(cfg, data, dc["mean"], dc["std"], pin_memory=device.type == "cuda")
    loss_fn = build_target_loss(cfg, data.target[split_index(data, cfg.fold)[0]]).to(device)
    model = to_device(model, device)
    optimizer = OPTIMIZERS[cfg.optimizer](trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = BudgetSchedule(optimizer, cfg.epochs * epoch_steps(train, cfg.max_batches), shape=cfg.schedule,
                               warmup=cfg.warmup)
    return Parts(cfg, data, model, loss_fn, optimizer, scheduler, train, val, device)


def epoch_steps(loader, max_batches: int = 0) -> int:
    """Batches an epoch trains: the loader's, at most ``max_batches`` (0 = all)."""
    return min(len(loader), max_batches) if max_batches else len(loader)


def run_epoch(parts: Parts, state: TrialState, validate: bool = True, stop_at: float = 0.0) -> EpochResult:
    """Train one epoch (cut short at unix time ``stop_at``, if given); validate it when there is a
    validation fold and ``validate``."""
    cfg = parts.cfg
    parts.train_loader.generator.manual_seed(cfg.seed + state.epoch)  # same batches after a resume
    train_loss = train_one_epoch(parts.model, parts.train_loader, parts.loss_fn, parts.optimizer,
                                 parts.scheduler, parts.device, max_batches=cfg.max_batches,
                                 precision=cfg.precision, stop_at=stop_at)
    trained = replace(state, epoch=state.epoch + 1)
    metrics = {"train_loss": train_loss}
    if parts.val_loader is None:
        return EpochResult(replace(trained, best_epoch=trained.epoch), metrics, True, None)
    if not validate:
        return EpochResult(trained, metrics, False, None)
    return validate_epoch(parts, trained, metrics)


def validate_epoch(parts: Parts, state: TrialState, metrics: dict) -> EpochResult:
    """Score the model as it is now, as epoch ``state.epoch`` (already trained)."""
    val = evaluate(parts.model, parts.val_loader, parts.loss_fn, parts.device, parts.cfg.head,
                   precision=parts.cfg.precision)
    improved = val.f1 > state.best_f1
    new = replace(state, best_f1=val.f1 if improved else state.best_f1,
                  best_epoch=state.epoch if improved else state.best_epoch)
    return EpochResult(new, metrics | dict(val_f1=val.f1, val_loss=val.loss, val_acc=val.acc), improved, val)


def fold_list(cfg: TrialConfig) -> list[int]:
    """The validation folds a trial trains: ``fold`` and the next ``search_folds - 1``."""
    if not cfg.has_validation:
        return [cfg.fold]
    return [(cfg.fold + i) % cfg.folds for i in range(cfg.search_folds)]


def build_fold_parts(cfg: TrialConfig, ws: Workspace, *, pins: dict | None = None) -> list[Parts]:
    return [build_parts(replace(cfg, fold=f, search_folds=1), ws, pins=pins) for f in fold_list(cfg)]


def _merge(results: list[EpochResult], state: TrialState) -> EpochResult:
    """The fold models' results as one: metrics (and the best epoch) are the folds' means."""
    if len(results) == 1:
        return results[0]
    metrics = {k: float(np.mean([r.metrics[k] for r in results])) for k in results[0].metrics}
    if results[0].val is None:
        return replace(results[0], metrics=metrics)
    epoch = results[0].state.epoch
    improved = metrics["val_f1"] > state.best_f1
    new = replace(results[0].state, best_f1=metrics["val_f1"] if improved else state.best_f1,
                  best_epoch=epoch if improved else state.best_epoch)
    return EpochResult(new, metrics, improved, [r.val for r in results])


def run_folds_epoch(parts: list[Parts], state: TrialState, validate: bool = True,
                    stop_at: float = 0.0) -> EpochResult:
    """One epoch of every fold model of a trial. Only a one-model trial is cut at ``stop_at``:
    fold models trained one after another would otherwise get unequal epochs."""
    stop_at = stop_at if len(parts) == 1 else 0.0
    return _merge([run_epoch(p, state, validate, stop_at) for p in parts], state)


def validate_folds(parts: list[Parts], res: EpochResult) -> EpochResult:
    """Validate an epoch that was trained without validation (a trial's unplanned last one)."""
    if parts[0].val_loader is None or res.val is not None:
        return res
    state = res.state
    return _merge([validate_epoch(p, state, res.metrics) for p in parts], state)


def oof_of(parts: list[Parts], res: EpochResult) -> pd.DataFrame | None:
    if res.val is None:
        return None
    vals = res.val if isinstance(res.val, list) else [res.val]
    return pd.concat([oof_table(p, v) for p, v in zip(parts, vals)], ignore_index=True)


def oof_table(parts: Parts, val: EvalResult) -> pd.DataFrame:
    """Validation-fold probabilities (the ensemble's OOF input): `path`, p0..p{C-1} averaged over
    the views, and each view apart (orig_p0.., hflip_p0..), so the ensemble can average the views
    it predicts the eval images with."""
    n = val.probs.shape[1]
    cols = {f"p{i}": val.probs[:, i] for i in range(n)}
    for view, probs in val.views.items():
        cols |= {f"{view}_p{i}": probs[:, i] for i in range(n)}
    return pd.DataFrame({"path": parts.val_paths, **cols})


def save_state(parts: Parts, state: TrialState, path: Path) -> None:
    torch.save({"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
                "scheduler": parts.scheduler.state_dict(), "state": asdict(state)}, path)


def load_state(parts: Parts, path: Path) -> TrialState:
    blob = torch.load(path, map_location=parts.device, weights_only=True)
    parts.model.load_state_dict(blob["model"])
    parts.optimizer.load_state_dict(blob["optimizer"])
    parts.scheduler.load_state_dict(blob["scheduler"])
    return TrialState(**blob["state"])


def fit(cfg: TrialConfig, ws: Workspace) -> tuple[Parts, TrialState, list[dict]]:
    """Train without Ray or MLflow (plain loop): (parts, final state, per-epoch metrics)."""
    parts, state, history = build_parts(cfg, ws), TrialState(), []
    for _ in range(cfg.epochs):
        res = run_epoch(parts, state)
        state = res.state
        history.append(res.metrics)
    return parts, state, history
