"""Where the stages leave things for each other (README 'Commands' and 'On a cluster').

Every path hangs off one root; on a cluster the root is shared storage. Tune's storage and
MLflow's artifact root may live elsewhere (an NFS path or s3://...): ``storage`` and
``artifact_location``, from --storage / --artifact-location or the environment variables below.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


STORAGE_ENV = "ORCHESTRATOR_STORAGE"               # Tune storage (path or s3://...)
ARTIFACTS_ENV = "ORCHESTRATOR_ARTIFACT_LOCATION"   # MLflow artifact root of new experiments


@dataclass(frozen=True)
class Workspace:
    root: Path
    storage: str | None = None             # Tune storage; None: $ORCHESTRATOR_STORAGE, else WS/tune
    artifact_location: str | None = None   # None: $ORCHESTRATOR_ARTIFACT_LOCATION, else the store's default

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())
        object.__setattr__(self, "storage", self.storage or os.environ.get(STORAGE_ENV) or None)
        object.__setattr__(self, "artifact_location",
                           self.artifact_location or os.environ.get(ARTIFACTS_ENV) or None)

    @property
    def crops(self) -> Path:
        return self.root / "crops"

    @property
    def manifest(self) -> Path:
        return self.root / "crops" / "manifest.parquet"

    @property
    def tune(self) -> Path:
        """Tune's storage as a local (or NFS) path; WS/tune when ``storage`` is a URI."""
        if self.storage and "://" not in self.storage:
            return Path(self.storage).expanduser().resolve()
        return self.root / "tune"

    @property
    def tune_storage(self) -> str:
        """What RunConfig(storage_path=...) gets: ``storage`` as given (s3://...) or the path."""
        return self.storage if self.storage and "://" in self.storage else str(self.tune)

    def tune_experiment(self, name: str) -> str:
        """Path or URI of one Tune experiment (``Tuner.can_restore`` / ``restore`` take either)."""
        return f"{self.tune_storage.rstrip('/')}/{name}"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def scratch(self) -> Path:
        """Trials' temporary files, a folder per trial (trainables/trainable.py): in the workspace,
        so a killed trial's retry finds and removes them on any node."""
        return self.root / "scratch"

    @property
    def weights(self) -> Path:
        """Starting-weights files staged for trials (trainables.pretrained.stage_weights)."""
        return self.root / "weights"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def tracking_uri(self, explicit: str | None = None) -> str:
        """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the workspace."""
        return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    def make(self) -> "Workspace":
        for p in (self.root, self.crops, self.tune, self.results, self.models):
            p.mkdir(parents=True, exist_ok=True)
        return self
