"""A phase's deadline, kept in the workspace so that a rerun's plan reaches its resumed trials.

Under `run --budget` every trial trains until its phase's deadline. Tune restores a resumed
trial with the config it was saved with, so a deadline kept in the config would be the killed
run's, long past or wrong. The driver therefore writes each phase's deadline here before the
phase starts (``0``: none), and a trial reads it when it starts or resumes; the config's value
is only the fallback of a study made before this file existed.

A trial trained to a deadline has the cap (`run --max-epochs`) as its config's epochs. A resume
with no deadline (`tune --phase cv --resume` after a failed fold) therefore also records the
epochs its finished sibling trials trained, and the resumed trial trains that many, not the cap.
"""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text_atomic

FOLDER = "deadlines"   # in the workspace root (shared storage on a cluster, as the crops)


def deadline_file(root: Path | str, study: str, phase: str) -> Path:
    return Path(root) / FOLDER / f"{study}-{phase}.json"


def set_deadline(root: Path | str, study: str, phase: str, deadline: float, epochs: int = 0) -> None:
    """The unix time by which the phase's trials must end (0: no deadline) and, where a resume
    without a deadline continues a phase that trained to one, the epochs its trials train
    (its finished trials' count; 0: the trial's config says)."""
    write_text_atomic(json.dumps({"deadline": float(deadline), "epochs": int(epochs)}),
                      deadline_file(root, study, phase))


def _saved(root: Path | str, study: str, phase: str) -> dict:
    try:
        return json.loads(deadline_file(root, study, phase).read_text())
    except FileNotFoundError:
        return {}


def current_deadline(root: Path | str, study: str, phase: str, fallback: float = 0.0) -> float:
    return float(_saved(root, study, phase).get("deadline", fallback))


def current_epochs(root: Path | str, study: str, phase: str) -> int:
    """The epochs a phase's trials train instead of their config's (0: their config's)."""
    return int(_saved(root, study, phase).get("epochs", 0))
