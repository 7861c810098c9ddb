"""When the MLflow server goes away mid-study: say so clearly, keep the checkpoints, resume later.

Trials log from inside (results/trial_log.py), so a stopped server makes them fail (after
FailureConfig's retries) while their checkpoints stay in Tune's storage. The driver then finds
the server unreachable, leaves a marker in the experiment folder and raises TrackingError with
the fix. ``tune --resume`` restores errored trials only while that marker is there: they continue
from their checkpoints and finish their own MLflow runs. (Without an outage, errored trials stay
failed: OptunaSearch has already recorded them as failed; see orchestrator/stages/tune.py.)
"""
from __future__ import annotations

import json
import logging
import time

from results.tracking import TrackingError, check_tracking

log = logging.getLogger(__name__)

MARKER = "tracking_outage.json"


def _fs(exp_path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI such as s3://..."""
    from pyarrow.fs import FileSystem
    return FileSystem.from_uri(exp_path)


def outage_recorded(exp_path: str) -> bool:
    from pyarrow.fs import FileType
    try:
        fs, path = _fs(exp_path)
        return fs.get_file_info(f"{path}/{MARKER}").type == FileType.File
    except (OSError, ValueError):
        return False


def _write_marker(exp_path: str, info: dict) -> None:
    fs, path = _fs(exp_path)
    with fs.open_output_stream(f"{path}/{MARKER}") as f:
        f.write(json.dumps(info, indent=1).encode())


def _clear_marker(exp_path: str) -> None:
    fs, path = _fs(exp_path)
    try:
        fs.delete_file(f"{path}/{MARKER}")
    except (FileNotFoundError, OSError):
        pass


def check_after_fit(uri: str, exp_path: str, grid, resume_cmd: str) -> None:
    """After ``Tuner.fit``: raise TrackingError (and leave the marker) when trials failed and the
    tracking store is unreachable; clear an old marker when no trial failed."""
    failed = [r for r in grid if r.error is not None]
    if not failed:
        _clear_marker(exp_path)
        return
    try:
        check_tracking(uri)
        return                  # the store answers: these are ordinary trial failures
    except TrackingError as exc:
        reason = str(exc).split(" (", 1)[-1].split(")", 1)[0]
    _write_marker(exp_path, {"tracking_uri": uri, "failed_trials": len(failed), "time": time.time(),
                             "reason": reason})
    raise TrackingError(
        f"the MLflow tracking server {uri} stopped answering during the study ({reason}): "
        f"{len(failed)} of {len(grid)} trials failed. Their checkpoints are kept in {exp_path}. "
        f"Restart the server (same backend store), then continue with `{resume_cmd}`: those trials "
        "resume from their checkpoints and finish logging to their own MLflow runs")
