"""`reproduce RUN_ID`: train a logged trial again from what MLflow recorded and compare.

The run's tags hold everything it was made from: its TrialConfig (``config_json``) and its
study's input hashes (``input.*``: label table, fold split, crop set, settings, code). The
inputs are rebuilt from the data at hand (the fold file the study pinned, made again from the
label table if it is gone) and checked against those hashes; then the trial's epochs run again
in a plain loop (the trainable's own steps, without Ray or MLflow) and every logged per-epoch
metric is compared. On a CPU, with the trial's thread count, training is deterministic and the
metrics match bit for bit; elsewhere (a GPU, other threads, a trial resumed from a checkpoint,
whose augmentation draws restarted) they match within ``tolerance``.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.errors import DataError
from core.folds import FoldSpec, ensure_folds, fold_file, folds_key
from core.label_table import current_labels
from core.provenance import REPRODUCE_TOLERANCE, code_version, pinned_folds_key, rows_hash
from core.workspace import Workspace
from results.run_schema import ENSEMBLE, TRIAL, pins_of
from results.tracking import check_tracking, resolve_tracking_uri
from trainables.config import TrialConfig
from trainables.data import usable_train_rows
from trainables.trainer import TrialState, build_fold_parts, run_folds_epoch, validate_folds

from .ensemble import EnsembleOptions, ensemble

log = logging.getLogger(__name__)

METRICS = ("train_loss", "val_f1", "val_loss", "val_acc")   # what a trial logs every epoch
TOLERANCE = REPRODUCE_TOLERANCE


@dataclass(frozen=True)
class Reproduction:
    run_id: str
    table: pd.DataFrame = field(repr=False)   # metric, step, logged, reproduced, diff
    exact: bool                                # every metric equal bit for bit
    max_diff: float
    tolerance: float
    notes: tuple[str, ...] = ()                # why bit-for-bit is not expected, or what differs

    @property
    def matches(self) -> bool:
        return self.exact or self.max_diff <= self.tolerance

    def verdict(self) -> str:
        if self.exact:
            return f"run {self.run_id} reproduced bit for bit ({len(self.table)} metric values)"
        what = "within" if self.matches else "NOT within"
        return (f"run {self.run_id} reproduced {what} the tolerance {self.tolerance:g}: largest difference "
                f"{self.max_diff:.3g} over {len(self.table)} metric values")


def check_inputs(data: Path, ws: Workspace, cfg: TrialConfig, pins: dict) -> tuple[str, list[str]]:
    """The fold key to train on, after checking the data at hand against the run's input hashes
    (the fold file is made again from the label table when it is gone); code changes are notes."""
    table, labels = current_labels(data, ws)
    now = {"labels": labels, "crops": rows_hash(usable_train_rows(ws), ("path", "crop"))}
    diff = [f"{k}: the run used {pins[k]}, the data at hand gives {v}" for k, v in now.items()
            if pins.get(k) and pins[k] != v]
    key = pinned_folds_key(pins)
    spec = FoldSpec(cfg.folds, cfg.fold_seed)
    if key and not fold_file(ws.root, spec, key).is_file():
        if folds_key(table) != key:
            diff.append(f"folds: the run's split {pins['folds']} is gone and the label table at hand "
                        f"splits as {folds_key(table)}")
        else:
            ensure_folds(table, ws.root, spec)   # the same table splits the same way (seeded)
    if diff:
        raise DataError([f"reproduce: the inputs differ from what the run was made from: {d}" for d in diff]
                        + ["fix: restore the data, corrections and crops of the run (`preprocess` with its settings)"])
    notes = []
    if pins.get("code") and pins["code"] != code_version():
        notes.append(f"code: the run used {pins['code']}, this is {code_version()}")
    return key, notes


def logged_history(client, run_id: str) -> dict[tuple[str, int], float]:
    return {(k, m.step): m.value for k in METRICS for m in client.get_metric_history(run_id, k)}


def retrain(cfg: TrialConfig, ws: Workspace, pins: dict, epochs: int) -> dict[tuple[str, int], float]:
    """The trial's epochs again, step by step as the trainable runs them (trainables.trainable)."""
    parts = build_fold_parts(cfg, ws, pins=pins)
    state, out = TrialState(), {}
    while state.epoch < epochs:
        res = run_folds_epoch(parts, state, validate=state.epoch + 1 >= cfg.val_from)
        if res.state.epoch == epochs:   # a trial's last epoch is always validated
            res = validate_folds(parts, res)
        state = res.state
        out.update({(k, state.epoch): float(v) for k, v in res.metrics.items()})
    return out


def compare(logged: dict, again: dict) -> pd.DataFrame:
    rows = [(k, s, v, again.get((k, s), np.nan)) for (k, s), v in sorted(logged.items(), key=lambda x: (x[0][1], x[0][0]))]
    df = pd.DataFrame(rows, columns=["metric", "step", "logged", "reproduced"])
    df["diff"] = (df["reproduced"] - df["logged"]).abs()
    return df


def reproduce(data: Path, ws: Workspace, run_id: str, *, tracking_uri: str | None = None,
              threads: int | None = None, tolerance: float = TOLERANCE) -> Reproduction:
    """Train trial run ``run_id`` again from its recorded inputs and compare its metrics."""
    uri = resolve_tracking_uri(ws, tracking_uri)
    check_tracking(uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise DataError(f"reproduce: MLflow run {run_id} does not exist at {uri}; copy the run id from "
                        "the MLflow UI (or check --tracking-uri)") from exc
    tags = run.data.tags
    if tags.get("role") == ENSEMBLE:
        return reproduce_ensemble(data, ws, run, uri, tolerance)
    if tags.get("role") != TRIAL or "config_json" not in tags:
        raise DataError(f"reproduce: MLflow run {run_id} is neither a trial nor an ensemble run (role "
                        f"{tags.get('role', '?')}); pick a trial of a study or an ensemble")
    cfg = TrialConfig.from_dict(json.loads(tags["config_json"]))
    pins = pins_of(tags)
    _, notes = check_inputs(data, ws, cfg, pins)
    logged = logged_history(client, run_id)
    epochs = max((s for (k, s) in logged if k == "train_loss"), default=0)
    if not epochs:
        raise DataError(f"reproduce: MLflow run {run_id} logged no epoch (no train_loss); nothing to compare")
    threads = threads or int(tags.get("torch_threads") or 1)
    torch.set_num_threads(threads)
    # the loader's worker count does not change what it yields (trainables.data.SeededShuffle);
    # the precision the trial resolved on its device is the one to train in here too
    cfg = replace(cfg, num_workers=0, precision=tags.get("precision") or cfg.precision)
    notes += _why_not_exact(tags) + [_what_is_compared(logged, cfg)]
    table = compare(logged, retrain(cfg, ws, pins, epochs))
    exact = bool(np.array_equal(table["logged"].to_numpy(), table["reproduced"].to_numpy()))
    max_diff = float(table["diff"].max()) if table["diff"].notna().all() else float("inf")
    return Reproduction(run_id, table, exact, max_diff, tolerance, tuple(notes))


def _what_is_compared(logged: dict, cfg: TrialConfig) -> str:
    from trainables.loop import device_of, precision_of  # heavy (torch), as retrain
    device = device_of()
    names = sorted({k for k, _ in logged})
    return (f"compares the {len(logged)} per-epoch values the trial logged ({', '.join(names)}) with a "
            f"retrain here on {device.type} in {precision_of(device, cfg.precision)}, without DataLoader workers")


def _why_not_exact(tags: dict) -> list[str]:
    notes = []
    if tags.get("device", "cpu") != "cpu":
        notes.append(f"trained on {tags['device']} in {tags.get('precision', 'an untagged precision')}: GPU "
                     "kernels are deterministic only where torch has deterministic versions of them, and "
                     "another card or CPU computes in another order")
    if tags.get("resumed_from_epoch"):
        notes.append(f"resumed from a checkpoint at epoch {tags['resumed_from_epoch']}: its augmentation "
                     "draws restarted there")
    if tags.get("trained_to_deadline"):
        notes.append("trained to a deadline (run --budget): its learning rate followed the clock "
                     "(trainables/schedule.py); here it follows the steps, so the metrics drift apart")
    return notes


ENSEMBLE_METRICS = ("oof_f1_before", "oof_f1_after", "oof_f1_after_heldout", "oof_accuracy_after")


def reproduce_ensemble(data: Path, ws: Workspace, run, uri: str, tolerance: float) -> Reproduction:
    """The ensemble again with the runs and options it logged (its report and submission go to a
    temporary folder); its OOF metrics and every answer of its submission are compared."""
    p, t = run.data.params, run.data.tags
    # each head's own voters: a joint model picked by id alone would vote for every head, where the
    # ensemble may have voted a head with another study (`run --head-backbone`, `--heads age`)
    voters = json.loads(t["ensemble_runs"])
    ids = [f"{head}={r}" for head, rs in voters.items() for r in rs]
    tta = () if p.get("tta", "none") == "none" else tuple(p["tta"].split(","))
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        opts = EnsembleOptions(runs=tuple(ids), vote=p["vote"], tta=tta, calibrate=p["calibrate"] == "True",
                               eval_vote=p["eval_vote"], tracking_uri=uri, submission=Path(tmp) / "submission.csv",
                               report_dir=Path(tmp) / "report", record=False)   # never a newer champion
        res = ensemble(data, ws, opts)
        logged_sub = pd.read_csv(MlflowClient(uri).download_artifacts(run.info.run_id, "submission.csv", tmp))
        again_sub = pd.read_csv(res.submission)
    logged = {(k, 0): v for k, v in run.data.metrics.items() if k in ENSEMBLE_METRICS}
    again = {(k, 0): float(v) for k, v in res.metrics.items()}
    table = compare(logged, again)
    differing = int((logged_sub["ans"].to_numpy() != again_sub["ans"].to_numpy()).sum())
    table.loc[len(table)] = ["submission answers differing", 0, 0.0, float(differing), float(differing)]
    exact = bool(np.array_equal(table["logged"].to_numpy(), table["reproduced"].to_numpy()))
    return Reproduction(run.info.run_id, table, exact, float(table["diff"].max()), tolerance,
                        (f"ensemble of {len({r for rs in voters.values() for r in rs})} model runs, re-run as "
                         "`ensemble --runs HEAD=RUN_ID ...` with its logged options",))
