"""The Ray Tune function trainable: one head, one fold (or all data), reported every epoch.

Tune's ``config`` holds TrialConfig fields plus ``run`` (a RunContext dict). Every epoch it
reports val_f1 (the metric Tune optimises), val_loss, val_acc and train_loss with a
checkpoint; a restarted trial resumes from ``tune.get_checkpoint()`` and continues its own
MLflow run. The best epoch's model (and its OOF predictions) is logged as soon as it
appears, because ASHA may stop the trial after any report.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ray import tune

from core.deadlines import current_deadline, current_epochs
from core.failpoints import failpoint
from core.workspace import Workspace
from results.trial_log import TrialLogger

from .config import FORWARD_COST, PREDICTED_VIEWS, RunContext, TrialConfig
from .loop import placement
from .mlflow_model import pyfunc_spec
from .models import save_model_file
from .schedule import TrialTime
from .trainer import (TrialState, build_fold_parts, epoch_steps, load_state, oof_of, run_folds_epoch,
                      save_state, validate_folds)

def _state_file(i: int) -> str:
    return f"state_{i}.pt"   # one per fold model of the trial


def _restore(parts: list) -> TrialState:
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return TrialState()
    with ckpt.as_directory() as d:
        return [load_state(p, Path(d) / _state_file(i)) for i, p in enumerate(parts)][0]


def train_head(config: dict) -> None:
    cfg, ctx = TrialConfig.from_dict(config), RunContext.from_dict(config["run"])
    # a resume without a deadline trains as many epochs as the phase's finished trials did
    # (core/deadlines.py): a saved config trained to a deadline holds only the cap
    cfg = replace(cfg, epochs=min(cfg.epochs, current_epochs(ctx.workspace, ctx.study, ctx.phase) or cfg.epochs))
    parts = build_fold_parts(cfg, Workspace(ctx.workspace), pins=ctx.pins)
    state = _restore(parts)
    tc = tune.get_context()
    log = TrialLogger(ctx, cfg, trial_id=tc.get_trial_id(), trial_name=tc.get_trial_name(), run_id=state.run_id)
    state = TrialState(state.epoch, state.best_f1, state.best_epoch, log.run_id)
    where = _where(tc, ctx)
    log.set_tags(placement(parts[0].device, cfg.precision))   # where Ray put it: device, precision, GPU ids
    # the phase's deadline as this run's plan set it (a resumed trial's saved config holds the
    # killed run's: core/deadlines.py)
    deadline = current_deadline(ctx.workspace, ctx.study, ctx.phase, ctx.deadline)
    if deadline:   # its learning rate follows the clock: `reproduce` says it cannot match
        log.set_tags({"trained_to_deadline": "1", "deadline": f"{deadline:.1f}"})
    if state.epoch:   # restored from a checkpoint: its augmentation draws restarted (`reproduce`)
        log.set_tags({"resumed_from_epoch": str(state.epoch)})
    scratch, system_temp = _scratch(Workspace(ctx.workspace), tc), tempfile.tempdir
    # this process's temporary files (MLflow stages each logged model in one) go there too:
    # Tune runs one trial at a time per actor
    tempfile.tempdir = str(scratch)
    best_dir = scratch / "best"
    best_dir.mkdir()
    timing = TrialTime(deadline, val_share(parts[0]))
    try:
        while state.epoch < cfg.epochs:
            failpoint("epoch", epoch=state.epoch, **where)   # after `epoch` checkpoints the driver has
            end = timing.train_end()
            if end and end <= time.time():   # no time left: one whole epoch, annealed over its steps
                end = 0.0
                for p in parts:
                    p.scheduler.finish_within(epoch_steps(p.train_loader, p.cfg.max_batches))
            for p in parts:   # the learning rate anneals to the end of training (trainables/schedule.py)
                p.scheduler.end_time = end
            t0 = time.time()
            res = run_folds_epoch(parts, state, validate=False, stop_at=end)
            timing.epoch_done(time.time() - t0)
            last = res.state.epoch == cfg.epochs or timing.out_of_time()
            if last or res.state.epoch >= cfg.val_from:   # a trial always ends validated: its best
                t0 = time.time()                          # model and OOF rows are logged
                res = validate_folds(parts, res)
                timing.val_s = time.time() - t0 if res.val is not None else timing.val_s
            state = res.state
            log.log_metrics(res.metrics | {"lr": parts[0].scheduler.get_last_lr()[0]}, step=state.epoch)
            # full-data runs have no best epoch: log their model once, at the end
            if res.improved and (res.val is not None or last):
                _log_best(log, parts, res, best_dir)
            _report(parts, state, res.metrics, where)
            if last:
                break
        log.finish("FINISHED")
    except Exception:
        log.finish("FAILED")
        raise
    finally:
        tempfile.tempdir = system_temp   # the actor may run another trial
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch(ws: Workspace, tc) -> Path:
    """The trial's scratch folder, its own in the workspace (``WS/scratch``, beside Tune's storage,
    which --storage may put elsewhere): a trial killed hard (no ``finally`` runs) leaves its files
    there, not in the system's temp folder, and its retry or resume (same trial) removes them first."""
    scratch = ws.scratch / tc.get_experiment_name() / Path(tc.get_trial_dir()).name
    shutil.rmtree(scratch, ignore_errors=True)   # what a killed attempt of this trial left
    scratch.mkdir(parents=True)
    return scratch


def val_share(parts) -> float:
    """A validation's cost as a share of a training epoch: its images, each in every TTA view."""
    if parts.val_loader is None:
        return 0.0
    n_train = min(len(parts.train_loader.dataset),
                  epoch_steps(parts.train_loader, parts.cfg.max_batches) * parts.cfg.batch_size)
    return len(parts.val_loader.dataset) * PREDICTED_VIEWS * FORWARD_COST / max(1, n_train)


def _log_best(log: TrialLogger, parts: list, res, best_dir: Path) -> None:
    # a trial over several folds logs its first fold's model, and the OOF rows of every fold
    s = res.state
    model_file = save_model_file(best_dir / "model.pt", parts[0].model, parts[0].cfg, best_epoch=s.best_epoch,
                                 val_f1=max(s.best_f1, 0.0))
    best = {"best_epoch": s.best_epoch} | ({"best_val_f1": s.best_f1} if res.val is not None else {})
    log.log_metrics(best, step=s.epoch)   # first: the logged model links the metrics of its step
    log.log_model(model_file, pyfunc_spec(parts[0].cfg), s.epoch, oof_of(parts, res))


def _where(tc, ctx: RunContext) -> dict:
    """Where a trial is, for the fail points (core/failpoints.py): trial index, phase, Ray node."""
    import ray
    tag = Path(tc.get_trial_dir()).name.removeprefix(tc.get_trial_name() + "_").split("_")[0]
    return {"trial": int(tag) if tag.isdigit() else -1,   # Tune's trial counter (1, 2, ...)
            "id": tc.get_trial_id(), "phase": ctx.phase, "node": ray.get_runtime_context().get_node_id()}


def _report(parts: list, state: TrialState, metrics: dict, where: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(parts):
            save_state(p, state, Path(d) / _state_file(i))
            failpoint("checkpoint", epoch=state.epoch, written=i + 1, **where)   # half written
        tune.report({**metrics, "epoch": state.epoch, "best_val_f1": state.best_f1,
                     "best_epoch": state.best_epoch, "mlflow_run_id": state.run_id},
                    checkpoint=tune.Checkpoint.from_directory(d))
