"""A phase's deadline, kept in the workspace so that a rerun's plan reaches its resumed trials.

Under `run --budget` every trial trains until its phase's deadline. Tune restores a resumed
trial with the config it was saved with, so a deadline kept in the config would be the killed
run's, long past or wrong. The driver therefore writes each phase's deadline here before the
phase starts (``0``: none), and a trial reads it when it starts or resumes; the config's value
is only the fallback of a study made before this file existed.
"""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text_atomic

FOLDER = "deadlines"   # in the workspace root (shared storage on a cluster, as the crops)


def deadline_file(root: Path | str, study: str, phase: str) -> Path:
    return Path(root) / FOLDER / f"{study}-{phase}.json"


def set_deadline(root: Path | str, study: str, phase: str, deadline: float) -> None:
    """The unix time by which the phase's trials must end (0: no deadline)."""
    write_text_atomic(json.dumps({"deadline": float(deadline)}), deadline_file(root, study, phase))


def current_deadline(root: Path | str, study: str, phase: str, fallback: float = 0.0) -> float:
    path = deadline_file(root, study, phase)
    try:
        return float(json.loads(path.read_text())["deadline"])
    except FileNotFoundError:
        return fallback
