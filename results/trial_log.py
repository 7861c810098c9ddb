"""MLflow logging from inside a trial (not a driver callback: after Tuner.restore a callback
opens a second run per resumed trial). The run id travels in the trial's checkpoint."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from .run_schema import global_tracking_uri, MODEL_NAME, OOF_FILE, TRIAL, WEIGHTS_FILE, fold_label, logged_model_id, tag_filter, trial_run_name, trial_tags


class TrialLogger:
    """One MLflow run per trial; a no-op when the context has no tracking URI."""

    def __init__(self, ctx, cfg, *, trial_id: str, trial_name: str, run_id: str = ""):
        self.run_id, self.model_id, self.uri = run_id, "", ctx.tracking_uri
        self.tags = {"head": cfg.head, "phase": ctx.phase, "fold": fold_label(cfg.fold), "study": ctx.study}
        self.client = None
        if not ctx.tracking_uri:
            return
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=ctx.tracking_uri)
        exp = self.client.get_experiment_by_name(ctx.experiment)
        # a retried or restored trial continues its own run: from its checkpoint, or (stopped
        # before its first checkpoint) found by its tags
        self.run_id = run_id or self._existing(exp.experiment_id, ctx, trial_id)
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
            self.model_id = logged_model_id(self.client, self.run_id)
            return
        tags = trial_tags(head=cfg.head, fold=cfg.fold, study=ctx.study, trial_id=trial_id, phase=ctx.phase,
                          config_json=json.dumps(cfg.to_dict()), parent_run_id=ctx.parent_run_id, labels=ctx.labels,
                          pins=ctx.pins)
        name = trial_run_name(cfg.head, ctx.phase, cfg.fold, trial_id)
        self.run_id = self.client.create_run(exp.experiment_id, run_name=name, tags=tags).info.run_id
        from mlflow.entities import Param
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()])

    def _existing(self, experiment_id: str, ctx, trial_id: str) -> str:
        found = self.client.search_runs([experiment_id], filter_string=tag_filter(
            role=TRIAL, study=ctx.study, phase=ctx.phase, trial_id=trial_id), max_results=1)
        return found[0].info.run_id if found else ""

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.client is not None:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, v)

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step, model_id=self.model_id or None)
                                                    for k, v in metrics.items()])

    def log_model(self, model_file: Path, spec: dict, step: int, oof: pd.DataFrame | None = None) -> None:
        """The best model as the run's logged model ``model`` (pyfunc; ``spec`` from
        trainables.mlflow_model) linked to the run and its metrics at ``step``: made at the first
        best epoch, its files replaced at later ones (one copy on disk). Plus the OOF rows."""
        if self.client is None:
            return
        import mlflow
        from mlflow.models import Model
        first = not self.model_id
        if first:   # made here, in the run's experiment (Model.log would use the active one)
            run = self.client.get_run(self.run_id)
            self.model_id = self.client.create_logged_model(
                run.info.experiment_id, name=MODEL_NAME, source_run_id=self.run_id, params=run.data.params,
                tags=self.tags, model_type="pyfunc").model_id
        # the run is linked once (a second link at another step is refused); later metrics
        # carry the model id themselves (log_metrics)
        with tempfile.TemporaryDirectory() as d, global_tracking_uri(self.uri):
            # under one name, so each log replaces the last
            data = Path(d) / WEIGHTS_FILE
            shutil.copyfile(model_file, data)
            Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, step=step, model_id=self.model_id,
                      run_id=self.run_id if first else None, data_path=str(data), **spec)
        if oof is not None:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / Path(OOF_FILE).name
                oof.to_parquet(p, index=False)
                self.client.log_artifact(self.run_id, str(p), artifact_path=str(Path(OOF_FILE).parent))

    def finish(self, status: str = "FINISHED") -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status=status)

