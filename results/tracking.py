"""MLflow: where runs go, a reachability check before training, and finding runs.

What the runs are (names, tags, artifacts, lifecycle) is results/run_schema.py.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from .run_schema import (EXPERIMENT, LEGACY_MODEL_FILE, TRIAL, ensure_experiment, logged_model_id,  # noqa: F401
                         open_parent, quote, tag_filter, weights_uri)

parent_run = open_parent   # the name the stages used before run_schema
log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used (reported before any training)."""


def resolve_tracking_uri(ws, explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///WS/mlflow.db."""
    return ws.tracking_uri(explicit)


def _client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingError naming the URI and the fix when the store cannot be reached."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # MLflow retries opening a database that cannot be one for about 100 s: say so at once
        if problem := sqlite_problem(db):
            raise TrackingError(f"MLflow tracking store {uri} is unreachable ({problem}); fix --tracking-uri / "
                                "$MLFLOW_TRACKING_URI, or move that path aside so the workspace's SQLite file "
                                "is made anew")
    # fail fast instead of MLflow's minutes of retries, for this check only (later calls, and
    # trials, keep a retry budget that a slow but live server survives)
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s))}
    saved = {k: os.environ.get(k) for k in fast}
    if scheme in ("http", "https"):
        for k, v in fast.items():
            os.environ.setdefault(k, v)
    from mlflow.exceptions import MlflowException   # heavy, as the client
    from sqlalchemy.exc import SQLAlchemyError      # a database store's own (not a database, cannot open)
    try:
        _client(uri).search_experiments(max_results=1)
    except (MlflowException, SQLAlchemyError, OSError) as exc:   # a server down, a bad URI, a bad DB file
        raise TrackingError(f"MLflow tracking store {uri} is unreachable ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); start the server "
                            "(`mlflow server ...`), fix --tracking-uri / $MLFLOW_TRACKING_URI, "
                            "or drop them to use the workspace's SQLite file") from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SQLITE_HEADER = b"SQLite format 3\x00"   # the first 16 bytes of every SQLite database file


def sqlite_problem(db: Path) -> str:
    """Why ``db`` cannot be an SQLite database ('' when it can: absent, empty or an SQLite file)."""
    if db.is_dir():
        return "a folder, not a database file"
    if db.is_file() and db.stat().st_size:
        with open(db, "rb") as f:
            if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return "not an SQLite database file"
    return ""


def local_folder(uri: str) -> Path | None:
    """The local folder an artifact location names (file:// or a path); None for s3://, http://, ..."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def find_runs(uri: str, *, head: str | None = None, study: str | None = None, phase: str | None = None,
              experiment: str = EXPERIMENT, role: str = TRIAL) -> pd.DataFrame:
    """Runs as a table: run_id, status, start_time, artifact_uri, tags.*, metrics.*, params.*
    (newest first). ``role='trial'`` gives trial runs, 'study' the parent runs."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame(columns=["run_id", "status", "start_time", "artifact_uri"])
    runs = client.search_runs([exp.experiment_id], filter_string=tag_filter(role=role, head=head, study=study, phase=phase),
                              order_by=["attributes.start_time DESC"], max_results=50000)
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time,
               "artifact_uri": r.info.artifact_uri}
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "status", "start_time", "artifact_uri"])


def run_config(row: pd.Series) -> dict:
    """The TrialConfig dict a trial run was trained with (its `config_json` tag)."""
    return json.loads(row["tags.config_json"])


def download_artifact(uri: str, run_id: str, path: str, dst: Path | None = None) -> Path:
    """A run's artifact (e.g. 'model/model.pt') as a local file."""
    import mlflow.artifacts
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri,
                                                dst_path=None if dst is None else str(dst))
    return Path(local)


def download_model(uri: str, run_id: str, dst: Path | None = None) -> Path:
    """A trial run's model file (state dict + config, for trainables.models.load_model_file):
    from its logged model, or an older store's artifact model/model.pt."""
    import mlflow.artifacts
    client = _client(uri)
    model_id = logged_model_id(client, run_id)
    if not model_id:
        return download_artifact(uri, run_id, LEGACY_MODEL_FILE, dst)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=weights_uri(client, model_id), tracking_uri=uri,
                                                    dst_path=None if dst is None else str(dst)))


def most_at_once(uri: str, run_ids) -> int:
    """The most of these MLflow runs (trials) that were running at one moment: whether trials
    really ran side by side (each run spans its trial's training)."""
    client = _client(uri)
    infos = [client.get_run(r).info for r in run_ids]
    edges = sorted([(i.start_time, 1) for i in infos] + [(i.end_time, -1) for i in infos])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best
