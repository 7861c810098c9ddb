"""Shared storage on a cluster: is every place the stages write reachable from every node?

A trial on any node must read the same crops and write checkpoints and models where the driver
finds them. A path counts as shared when it is a remote URI (s3://, gs://, ...) or lies on a
network file system (NFS/EFS, Lustre, a FUSE mount of a bucket, ...). A local path is fine while
every Ray node runs on the driver's machine; with nodes on other hosts it gets a warning that
names the path and the fix, because Ray itself only fails later (at a trial's first checkpoint)
or, for crops, not at all: trials on other nodes would find no crops.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from core.errors import DataError

log = logging.getLogger(__name__)

REMOTE_SCHEMES = frozenset({"s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "mlflow-artifacts",
                            "http", "https"})
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph",
                        "glusterfs", "beegfs", "9p", "efs", "wekafs", "virtiofs"})


def is_remote(location: str) -> bool:
    """s3://bucket/x and friends (not file:// or sqlite:// or a plain path)."""
    return urlparse(str(location)).scheme.lower() in REMOTE_SCHEMES


def local_path(location: str) -> Path | None:
    """The filesystem path of a plain path, file:// URI or sqlite:/// URI; None for remote ones."""
    loc = str(location)
    u = urlparse(loc)
    if u.scheme in ("", "file"):
        return Path(u.path if u.scheme else loc).expanduser().resolve()
    if u.scheme == "sqlite":
        return Path(loc.removeprefix("sqlite:///")).expanduser().resolve()
    return None


def fs_type(path: Path, mounts: str | None = None) -> str:
    """File system type of the mount that holds ``path`` (from /proc/mounts; '' if unknown)."""
    try:
        mounts = mounts if mounts is not None else Path("/proc/mounts").read_text()
    except OSError:
        return ""
    best, kind = "", ""
    target = str(path)
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def is_shared(location: str, mounts: str | None = None) -> bool:
    if is_remote(location):
        return True
    path = local_path(location)
    if path is None:           # an unknown scheme: not ours to judge
        return True
    kind = fs_type(path, mounts)
    return kind in NETWORK_FS or kind.startswith("fuse.") or kind == "fuse"


def unshared(locations: dict[str, str], hosts: int, mounts: str | None = None) -> list[str]:
    """One warning per location that other hosts cannot reach (none when ``hosts`` <= 1)."""
    if hosts <= 1:
        return []
    out = []
    for what, loc in locations.items():
        if loc and not is_shared(loc, mounts):
            path = local_path(loc)
            kind = fs_type(path, mounts) or "unknown"
            out.append(f"{what} is {path}, on this machine's local disk ({kind}), but the Ray cluster has "
                       f"(or may add) nodes on {hosts} hosts: nodes elsewhere cannot read or write it. Put it on shared "
                       "storage: --workspace on an NFS/EFS mount, --storage s3://BUCKET/tune or an NFS "
                       "path, and an MLflow server (--tracking-uri http://HEAD:5000) whose "
                       "--artifacts-destination (or --artifact-location) is shared")
    return out


def cluster_hosts(address: str | None = None) -> int:
    """How many distinct machines the live Ray nodes run on (needs a connected Ray); a cluster
    joined through ``address`` counts as at least 2: an autoscaling one has only its head when
    the driver starts, and its workers come later, on other machines."""
    import ray
    live = len({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
    return max(live, 2) if address else live


def check_tracking_store(tracking_uri: str | None, hosts: int, mounts: str | None = None) -> None:
    """DataError for an MLflow SQLite store on a network file system while trials may run on
    several hosts: SQLite's file locks do not hold over NFS/EFS, so trials writing from several
    nodes can corrupt it (and lose runs)."""
    if hosts <= 1 or not tracking_uri or urlparse(tracking_uri).scheme != "sqlite":
        return
    path = local_path(tracking_uri)
    kind = fs_type(path, mounts)
    if kind in NETWORK_FS or kind.startswith("fuse"):
        raise DataError(f"the MLflow store {tracking_uri} is a SQLite file on a network file system ({kind}), "
                        "and trials on several hosts would write it at once: SQLite's locks do not hold there "
                        "and the store can corrupt. Start an MLflow tracking server on the head (cluster.yaml "
                        "starts one) and pass --tracking-uri http://HEAD:5000 or set MLFLOW_TRACKING_URI")


def stage_locations(ws, tracking_uri: str | None = None, tune: bool = True) -> dict[str, str]:
    """Everything the stages write, by what it is (for the warning); ``tune=False`` for
    preprocessing, which writes only the crop cache."""
    locs = {"the workspace (crop cache, folds)": str(ws.root)}
    if tune:
        locs["Tune storage"] = ws.tune_storage
    if ws.artifact_location:
        locs["the MLflow artifact location"] = ws.artifact_location
    if tracking_uri and urlparse(tracking_uri).scheme in ("sqlite", "file", ""):
        # trials log from their own node: a file store must be reachable there too
        locs["the MLflow store"] = tracking_uri
    return locs


def warn_if_not_shared(ws, tracking_uri: str | None = None, tune: bool = True,
                       address: str | None = None) -> list[str]:
    """Log (and return) a warning for each place a multi-host cluster cannot share; DataError for
    a SQLite MLflow store on a network file system (check_tracking_store). ``address``: the
    cluster was joined through --address (multi-host, even before its workers start)."""
    hosts = cluster_hosts(address)
    check_tracking_store(tracking_uri, hosts)
    msgs = unshared(stage_locations(ws, tracking_uri, tune), hosts)
    for m in msgs:
        log.warning(m)
    return msgs


# MLflow's HTTP budget inside trials: a stopped server fails a trial in ~5 s (then Tune retries
# it from its checkpoint) instead of MLflow's default minutes of back-off; a slow but live server
# gets 60 s per call, because a POST that timed out after the server stored it would be sent
# again and log the metric twice.
TRIAL_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def trial_env() -> dict[str, str]:
    """Environment for every Ray worker of a study: TRIAL_HTTP, where the driver's own
    environment does not say otherwise, and the tracking token (workers on other nodes were
    not started from the driver's shell)."""
    keys = tuple(TRIAL_HTTP) + ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    return TRIAL_HTTP | {k: os.environ[k] for k in keys if k in os.environ}
