"""What a result was made from: the code version and content hashes of tables.

A study records these (orchestrator.study.pins) and every trial logs them as MLflow tags, so a
resume can refuse other inputs and `reproduce` can check the data at hand.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PACKAGE = "mask-orchestrator"
ROOT = Path(__file__).resolve().parents[1]
REPRODUCE_TOLERANCE = 1e-4   # `reproduce`: largest metric difference accepted when bit-for-bit is not expected


def text_hash(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def rows_hash(table: pd.DataFrame, columns) -> str:
    """Content hash of ``columns`` of a table; row order and other columns do not matter."""
    rows = table.loc[:, list(columns)].astype(str)
    return text_hash(rows.sort_values(list(columns)).to_csv(index=False))


def dict_hash(d: dict) -> str:
    return text_hash(json.dumps(d, sort_keys=True, default=str))


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True, timeout=10).stdout


def code_version() -> str:
    """The git commit of this code, plus a hash of uncommitted changes to tracked files
    (``<commit>+<hash>``); outside git, the installed package's version."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        diff = _git("diff", "HEAD", "--", ".")
    except (OSError, subprocess.SubprocessError):
        try:
            return f"{PACKAGE} {metadata.version(PACKAGE)}"
        except metadata.PackageNotFoundError:
            return "unknown"
    return f"{commit}+{text_hash(diff, 8)}" if diff else commit


def pinned_folds_key(pins: dict) -> str:
    """The fold file key of a study's pins (``folds``: ``<spec>-<key>``); "" without pins."""
    return pins.get("folds", "").rsplit("-", 1)[-1]
