"""Where the stages leave things for each other (see DESIGN.md 'Workspace').

Every path hangs off one root; on a cluster the root is shared storage.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def crops(self) -> Path:
        return self.root / "crops"

    @property
    def manifest(self) -> Path:
        return self.root / "crops" / "manifest.parquet"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def results(self) -> Path:
        return self.root / "results"

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
