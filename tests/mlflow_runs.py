"""Test helpers: a real MLflow SQLite store holding runs in the trainables' contract
(tags head/fold/study/phase/stage, the best model as the run's MLflow logged model ``model``
as `run` logs it (results.trial_log.TrialLogger), OOF rows in oof/predictions.parquet), and a
crop manifest in the contract of core.manifest. ``legacy=True`` writes an older store's run
instead (a loose model/model.pt artifact), which the ensemble still reads.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from core.dataset import load_eval, load_train
from core.folds import FoldSpec, assign_folds
from core.labels import HEADS, decode
from core.manifest import COLUMNS
from core.workspace import Workspace
from results.trial_log import TrialLogger
from trainables.config import RunContext, TrialConfig
from trainables.mlflow_model import pyfunc_spec
from trainables.models import build_model, save_model_file

EXPERIMENT = "orchestrator"
_TEMPLATE: list[Path] = []


def _empty_db() -> Path:
    """An empty, migrated MLflow database, made once per test session (migrations take ~5 s)."""
    if not _TEMPLATE:
        db = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{db}").search_experiments()
        _TEMPLATE.append(db)
    return _TEMPLATE[0]


def store(ws: Path) -> MlflowClient:
    """A SQLite tracking store in ``ws`` with the experiment, artifacts beside it."""
    ws = Workspace(ws).make()
    if not (ws.root / "mlflow.db").exists():
        shutil.copyfile(_empty_db(), ws.root / "mlflow.db")
    client = MlflowClient(ws.tracking_uri())
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=(ws.root / "mlartifacts").as_uri())
    return client


def save_model(path: Path, head: str) -> TrialConfig:
    """A tiny untrained model of ``head`` in trainables' file format; its config."""
    cfg = TrialConfig(head=head, model="test_efficientnet", img_size=32, epochs=1, batch_size=4)
    save_model_file(path, build_model(cfg, pretrained=""), cfg)
    return cfg


def log_model_run(client: MlflowClient, tmp: Path, *, head: str, phase: str, fold: int | str = "",
                  study: str = "s1", oof: pd.DataFrame | None = None, model: bool = True,
                  status: str = "FINISHED", tags: dict | None = None, legacy: bool = False) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    tags = {"head": head, "phase": phase, "fold": str(fold), "study": study, "role": "trial",
            "stage": "full" if phase == "full" else "tune", "trial_id": f"t{fold}", **(tags or {})}
    run = client.create_run(exp.experiment_id, tags=tags, run_name=f"{head}-{phase}-{fold}")
    rid = run.info.run_id
    folder = tmp / rid
    folder.mkdir(parents=True)
    if model and legacy:
        (folder / "model").mkdir()
        save_model(folder / "model" / "model.pt", head)
        client.log_artifact(rid, str(folder / "model" / "model.pt"), "model")
    elif model:   # as a trial logs its best model and OOF rows: the same code, on this run
        cfg = save_model(folder / "model.pt", head)
        ctx = RunContext(data="", workspace="", tracking_uri=client.tracking_uri, study=study, phase=phase)
        log = TrialLogger(ctx, cfg, trial_id=tags["trial_id"], trial_name=run.info.run_name, run_id=rid)
        log.log_model(folder / "model.pt", pyfunc_spec(cfg), step=1, oof=oof)
        oof = None
    if oof is not None:
        (folder / "oof").mkdir(parents=True, exist_ok=True)
        oof.to_parquet(folder / "oof" / "predictions.parquet", index=False)
        client.log_artifact(rid, str(folder / "oof" / "predictions.parquet"), "oof")
    client.set_terminated(rid, status)
    return rid


def joint_oof_frame(train: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A joint (all) model's OOF table: every head's columns side by side, p0..p7."""
    parts = [oof_frame(train, h, rng)[[f"p{k}" for k in range(HEADS[h].num_classes)]].to_numpy() for h in HEADS]
    return _with_views(train, np.concatenate(parts, 1))


def _with_views(train: pd.DataFrame, p: np.ndarray) -> pd.DataFrame:
    """`path`, p0.. and the per-view columns a trial logs (here every view predicts the same)."""
    cols = {f"{v}p{k}": p[:, k] for v in ("", "orig_", "hflip_") for k in range(p.shape[1])}
    return pd.DataFrame({"path": train["path"].to_numpy(), **cols})


def oof_frame(train: pd.DataFrame, head: str, rng: np.random.Generator, skill: float = 2.0) -> pd.DataFrame:
    """Probabilities that lean toward the true class of each image (competition boundary)."""
    truth = dict(zip(("mask", "gender", "age"), decode(train["label"].to_numpy())))[head]
    c = HEADS[head].num_classes
    logits = rng.normal(0, 1, (len(train), c))
    logits[np.arange(len(train)), truth] += skill
    return _with_views(train, np.exp(logits) / np.exp(logits).sum(1, keepdims=True))


def write_manifest(data: Path, ws: Path) -> pd.DataFrame:
    """A manifest in the preprocess contract whose 'crops' are the source images copied."""
    ws = Workspace(ws).make()
    train, ev = load_train(data), load_eval(data)
    rows = []
    for r in train.itertuples():
        rows.append({"path": r.path, "person": r.person, "split": "train", "image_id": "",
                     "kind": r.kind, "mask": r.mask, "gender": r.gender, "age": r.age, "label": r.label})
    for r in ev.itertuples():
        rows.append({"path": r.path, "person": "", "split": "eval", "image_id": r.image_id,
                     "kind": "", "mask": -1, "gender": -1, "age": -1, "label": -1})
    df = pd.DataFrame(rows)
    df["crop"] = [p.replace("/", "__") for p in df["path"]]
    for p, crop in zip(df["path"], df["crop"]):
        shutil.copyfile(Path(data) / p, ws.crops / crop)
    df = df.assign(x1=0.0, y1=0.0, x2=1.0, y2=1.0, prob=np.nan, fallback=True, error="")
    df[list(COLUMNS)].to_parquet(ws.manifest, index=False)
    return df


def log_study(client: MlflowClient, data: Path, tmp: Path, *, study: str = "s1", k: int = 3,
              full: bool = True, seed: int = 0) -> dict[str, list[str]]:
    """K cv fold runs (with OOF) + one full run per head, like tune + retrain leave them."""
    train = load_train(data)
    fold = assign_folds(train, FoldSpec(k=k)).to_numpy()
    rng = np.random.default_rng(seed)
    ids: dict[str, list[str]] = {}
    exp = client.get_experiment_by_name(EXPERIMENT)
    for head in HEADS:
        # the study's parent run carries the same tags and no model: selection must skip it
        parent = client.create_run(exp.experiment_id, run_name=f"study-{study}-cv",
                                   tags={"role": "study", "study": study, "phase": "cv", "head": head})
        client.set_terminated(parent.info.run_id)
        ids[head] = [log_model_run(client, tmp, head=head, phase="cv", fold=f, study=study,
                                   oof=oof_frame(train[fold == f], head, rng)) for f in range(k)]
        if full:
            ids[head].append(log_model_run(client, tmp, head=head, phase="full", fold=-1, study=study))
    return ids
