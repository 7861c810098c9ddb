"""The corrected label table every stage trains and scores with, and its content hash.

The labels are train.csv with the workspace's corrections applied. A corrections file is set
once (``--corrections FILE`` on any command records it in ``WS/corrections.json``; ``none``
clears it) and every later command reads it from there, so preprocess (the manifest's labels),
the folds, the trials, the OOF truth, the calibration and the report all see one table.

``labels_hash`` names that table by its content. What depends on labels carries the hash it
was made from (every trial's MLflow run as the tag ``labels``; the manifest holds the labels
themselves; a fold file is named by core.folds.folds_key of the table it splits), and the stages
compare it with the current one instead of mixing old and new labels.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from .atomic import write_text_atomic
from .dataset import load_train
from .errors import DataError
from .labels import COMPETITION_OLD_AGE
from .manifest import read_manifest
from .workspace import Workspace

RECORD = "corrections.json"          # in the workspace root: {"path": absolute corrections file}
CLEAR = ("none", "")                 # --corrections none: train on train.csv as it is
HASHED = ("path", "person", "mask", "gender", "age")   # what a label table is, per image


def set_corrections(ws: Workspace, corrections: Path | str | None, data: Path | str | None = None) -> Path | None:
    """Record ``corrections`` as the workspace's corrections file (``none``: clear it).
    Returns the file now in effect. ``None`` leaves the record as it is. With ``data`` (a data
    set with its train.csv), the file is applied first: a file with a bad row is refused and
    the record stays as it was, so no later command inherits it."""
    record = Path(ws.root) / RECORD
    if corrections is None:
        return corrections_file(ws)
    if str(corrections).strip().lower() in CLEAR:
        record.unlink(missing_ok=True)
        return None
    path = Path(corrections).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"--corrections {corrections}: no such file; give a CSV with columns "
                        "id,field,value[,note] (README 'Data layout'), or 'none'")
    if data is not None and (Path(data) / "train" / "train.csv").is_file():
        load_train(data, corrections=path)   # DataError naming the file's bad lines
    write_text_atomic(json.dumps({"path": str(path)}), record)
    return path


def corrections_file(ws: Workspace) -> Path | None:
    """The corrections file the workspace records (None: no corrections)."""
    record = Path(ws.root) / RECORD
    if not record.is_file():
        return None
    fix = "pass --corrections FILE (or --corrections none to train without corrections)"
    try:
        path = Path(json.loads(record.read_text(encoding="utf-8-sig"))["path"])
    except (ValueError, KeyError, TypeError) as exc:   # edited by hand: not JSON, no "path", not a string
        raise DataError(f"{record}: not a corrections record ({type(exc).__name__}: {exc}); it holds "
                        f'{{"path": "/absolute/corrections.csv"}}; {fix}') from exc
    if not path.is_file():
        raise DataError(f"{record}: the workspace's corrections file {path} no longer exists; {fix}")
    return path


def load_labels(data: Path | str, ws: Workspace, *, old_from: int = COMPETITION_OLD_AGE) -> pd.DataFrame:
    """train.csv + the workspace's corrections: one row per training image (core.dataset)."""
    return load_train(data, old_from=old_from, corrections=corrections_file(ws))


def labels_hash(table: pd.DataFrame) -> str:
    """Content hash of a label table (path, person, mask, gender, age per image; row order and
    other columns do not matter). The same for load_train's table and the manifest's train rows."""
    rows = table.loc[:, list(HASHED)].astype({"person": str, "mask": int, "gender": int, "age": int})
    text = rows.sort_values("path").to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_labels_hash(manifest: pd.DataFrame) -> str:
    return labels_hash(manifest[manifest["split"] == "train"])


def current_labels(data: Path | str, ws: Workspace) -> tuple[pd.DataFrame, str]:
    """The current label table and its hash, after checking that the crop manifest holds exactly
    these labels (else: which command makes it so)."""
    table = load_labels(data, ws)
    want = labels_hash(table)
    have = manifest_labels_hash(read_manifest(ws.manifest))
    if have != want:
        fix = corrections_file(ws)
        raise DataError(f"{ws.manifest}: its labels (table {have}) are not train.csv + the workspace's "
                        f"corrections ({fix or 'none'}; table {want}): train.csv or the corrections changed "
                        "since preprocessing; rerun `python -m orchestrator preprocess` (cached crops "
                        "are reused), then retrain what depends on the labels")
    return table, want


def check_runs_labels(runs: dict[str, str], current: str, fix: str) -> None:
    """``runs``: run id -> the ``labels`` tag it was trained with ('' for runs from before the tag).
    Runs trained on another label table stop the command, naming them and ``fix``."""
    stale = {r: h for r, h in runs.items() if h and h != current}
    if stale:
        listed = ", ".join(f"{r} (labels {h})" for r, h in list(stale.items())[:5])
        raise DataError(f"{len(stale)} model run(s) were trained on another label table than the current "
                        f"one ({current}; train.csv or the corrections changed since): {listed}; {fix}")
