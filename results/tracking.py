"""MLflow: where runs go, a reachability check before training, and run selection.

Runs of a study: one parent per study+phase (tag role=study) and one child per trial
(tag role=trial) tagged head, fold, study, trial_id, phase, stage; see README 'tune'.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

EXPERIMENT = "orchestrator"
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
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # fail fast instead of MLflow's minutes of retries, for this check only (later calls, and
    # trials, keep a retry budget that a slow but live server survives)
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s))}
    saved = {k: os.environ.get(k) for k in fast}
    if scheme in ("http", "https"):
        for k, v in fast.items():
            os.environ.setdefault(k, v)
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types (connection, DB, permission)
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


def ensure_experiment(uri: str, name: str = EXPERIMENT, artifact_root: Path | None = None,
                      location: str | None = None) -> str:
    """The experiment id, created if missing. ``location`` (--artifact-location: a shared path or
    s3://...) is where a new experiment keeps its artifacts; else local stores get an absolute
    ``artifact_root`` (MLflow's default './mlruns' is relative to the cwd, and Tune trials chdir)
    and a server its own default (--artifacts-destination)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if location and exp.artifact_location.rstrip("/") != _as_location(location).rstrip("/"):
            log.warning("MLflow experiment %r keeps its artifact location %s (fixed when it was created); "
                        "--artifact-location %s applies to new experiments: pass --experiment NEW_NAME",
                        name, exp.artifact_location, location)
        return exp.experiment_id
    local = urlparse(uri).scheme in ("sqlite", "file", "")
    if location:
        location = _as_location(location)
    elif local and artifact_root:
        location = Path(artifact_root).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _as_location(location: str) -> str:
    """A plain path as an absolute file:// URI (trials chdir); URIs as given."""
    return location if "://" in location or location.startswith("mlflow-artifacts:") \
        else Path(location).expanduser().resolve().as_uri()


def parent_run(uri: str, experiment_id: str, *, study: str, phase: str, head: str) -> str:
    """The study+phase parent run (reused when a study resumes)."""
    client = _client(uri)
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.role = 'study' and tags.study = '{study}' and tags.phase = '{phase}' and tags.head = '{head}'"))
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    tags = {"role": "study", "study": study, "phase": phase, "head": head,
            "stage": "full" if phase == "full" else "tune"}
    return client.create_run(experiment_id, run_name=f"study-{study}-{phase}", tags=tags).info.run_id


def _quote(v) -> str:
    return "'" + str(v).replace("'", "\\'") + "'"


def find_runs(uri: str, *, head: str | None = None, study: str | None = None, phase: str | None = None,
              experiment: str = EXPERIMENT, role: str = "trial") -> pd.DataFrame:
    """Runs as a table: run_id, status, start_time, artifact_uri, tags.*, metrics.*, params.*
    (newest first). ``role='trial'`` gives trial runs, 'study' the parent runs."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame(columns=["run_id", "status", "start_time", "artifact_uri"])
    filters = [f"tags.role = {_quote(role)}"] + [
        f"tags.{k} = {_quote(v)}" for k, v in (("head", head), ("study", study), ("phase", phase)) if v is not None]
    runs = client.search_runs([exp.experiment_id], filter_string=" and ".join(filters),
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
