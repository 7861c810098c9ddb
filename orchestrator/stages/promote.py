"""`promote`: register a logged model in the MLflow model registry and point an alias at it
(what the UI's Register model button and its alias editor do).

By default the newest ensemble run's logged model ``ensemble`` becomes a new version of the
registered model ``orchestrator-ensemble`` with the alias ``champion``, so anyone can
``mlflow.pyfunc.load_model("models:/orchestrator-ensemble@champion").predict(...)``.
``--model`` registers another: a logged model id (``m-...``), ``runs:/RUN_ID/model`` or a run id.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.errors import DataError
from orchestrator.options import PromoteOptions
from results.run_schema import (
    ENSEMBLE,
    ENSEMBLE_MODEL_NAME,
    EXPERIMENT,
    MODEL_NAME,
    global_tracking_uri,
    logged_model_id,
    tag_filter,
)

DEFAULT_NAME, DEFAULT_ALIAS = PromoteOptions.name, PromoteOptions.alias
LOGGED = re.compile(r"^(?:models:/)?(m-[0-9a-f]{32})$")
RUN = re.compile(r"^(?:runs:/)?([0-9a-f]{32})(?:/(.+))?$")


@dataclass(frozen=True)
class Promoted:
    name: str
    version: str
    alias: str
    model_id: str
    is_ensemble: bool   # the whole ensemble (else one member model)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def _newest_ensemble(client: MlflowClient, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=tag_filter(role=ENSEMBLE) + " and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        if model_id := logged_model_id(client, run, ENSEMBLE_MODEL_NAME):
            return model_id
    raise DataError(f"no finished ensemble run with a logged model '{ENSEMBLE_MODEL_NAME}' in experiment "
                    f"{experiment!r} at {client.tracking_uri}; run `python -m orchestrator ensemble` first, "
                    "or name the model with --model")


def resolve(client: MlflowClient, model: str | None, experiment: str = EXPERIMENT) -> str:
    """The logged model id that ``--model`` names (None: the newest ensemble's)."""
    if model is None:
        return _newest_ensemble(client, experiment)
    if m := LOGGED.match(model.strip()):
        return m[1]
    if m := RUN.match(model.strip()):
        try:
            run = client.get_run(m[1])
        except MlflowException as exc:
            raise DataError(f"--model {model}: MLflow run {m[1]} does not exist at {client.tracking_uri}") from exc
        name = m[2] or (ENSEMBLE_MODEL_NAME if run.data.tags.get("role") == ENSEMBLE else MODEL_NAME)
        if model_id := logged_model_id(client, run, name):
            return model_id
        raise DataError(f"--model {model}: run {m[1]} has no logged model {name!r} (runs of older stores keep "
                        "a loose model/model.pt, which the registry cannot hold: retrain, or use --runs RUN_ID)")
    raise DataError(f"--model {model!r}: write a logged model id (m-...), runs:/RUN_ID/model or a run id")


def promote(uri: str, *, model: str | None = None, name: str = DEFAULT_NAME, alias: str = DEFAULT_ALIAS,
            experiment: str = EXPERIMENT) -> Promoted:
    """Register the model as a new version of ``name`` and move ``alias`` to it."""
    import mlflow
    client = MlflowClient(uri)
    model_id = resolve(client, model, experiment)
    with global_tracking_uri(uri):
        version = mlflow.register_model(f"models:/{model_id}", name)
    client.set_registered_model_alias(name, alias, version.version)
    return Promoted(name, str(version.version), alias, model_id,
                    client.get_logged_model(model_id).name == ENSEMBLE_MODEL_NAME)
