"""Connecting to Ray the same way in every stage (a running cluster for "auto", else a local
one) and sizing trials (shared by `preprocess`, `tune`, `retrain` and `run`)."""
from __future__ import annotations

import logging
import math
import os
import signal
from contextlib import contextmanager
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)


def _runtime_env() -> dict:
    # trials get MLflow's HTTP budget from here, also on nodes not started from this shell
    from .storage import trial_env
    return {"env_vars": trial_env()}


AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def reap_orphaned_agents(proc: Path = Path("/proc")) -> list[int]:
    """SIGKILL this user's Ray node agents whose raylet is gone; returns their pids.

    A driver killed hard (SIGKILL, the OOM killer) takes its local Ray's GCS and raylet with it,
    but the two agents outlive them by a minute or more: each sees its raylet die at once, then
    reports that to the dead GCS with a 60 s timeout before it exits. An agent whose parent is
    no longer a raylet serves no node (a live one is always its raylet's child), so this is safe
    beside other Ray sessions on the machine."""
    if not proc.is_dir():   # not Linux: nothing to read, and the agents exit on their own
        return []
    reaped = []
    for d in proc.iterdir():
        try:
            if not d.name.isdigit() or d.stat().st_uid != os.getuid():
                continue
            if (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").split(" ")[0] not in AGENTS:
                continue
            ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if ppid != "0" and (proc / ppid / "comm").read_text().strip() == "raylet":
                continue
            os.kill(int(d.name), signal.SIGKILL)
            reaped.append(int(d.name))
        except (OSError, IndexError):   # gone meanwhile, or not ours to read
            continue
    if reaped:
        log.info("killed %d Ray agent process(es) left by a Ray session whose driver died: pids %s",
                 len(reaped), " ".join(map(str, reaped)))
    return reaped


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Use the cluster at ``address`` ("auto": the one `ray start`/`ray up` runs here), or start a
    local Ray with ``num_cpus`` logical CPUs (None: every core). Reuses an already-open session.
    Agents a killed earlier driver left behind are cleaned up first (reap_orphaned_agents)."""
    import ray
    if ray.is_initialized():
        return
    reap_orphaned_agents()
    if address:
        try:
            ray.init(address=address, log_to_driver=False, runtime_env=_runtime_env())
        except ConnectionError as exc:
            raise ConnectionError(f"no Ray cluster at {address!r} ({exc}); start one with "
                                  "`ray start --head` or `ray up cluster.yaml`, or leave out --address "
                                  "to run Ray locally") from exc
        log.info("connected to Ray cluster at %s: %s", address, ray.cluster_resources())
        return
    # address="local": always a new local Ray; plain ray.init() would join any cluster another
    # process started on this machine. log_to_driver=False: worker chatter breaks the progress bar
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env=_runtime_env())
    log.info("started a local Ray: %s", ray.cluster_resources())


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Like ``init_ray``, as a context: only a session started here is shut down on exit,
    so `run` can hold one session over every stage."""
    import ray
    started = not ray.is_initialized()
    init_ray(address, num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def gpu_share(asked: float | None, default: float) -> float:
    """GPUs a worker or trial asks Ray for: what the user asked, else ``default`` where the cluster
    has or can get GPUs and 0 where it has none. Never 0 by accident on a GPU cluster: Ray hides the
    GPUs (CUDA_VISIBLE_DEVICES="") from a process that reserved none, so it would train on the CPU."""
    if asked is not None:
        return asked
    return default if cluster_capacity().get("GPU", 0) > 0 else 0.0


def node_types_capacity(config: dict) -> dict[str, float]:
    """What a cluster of an autoscaling ``config`` (cluster.yaml's keys) holds at its largest:
    the head's resources plus every worker type's at its max_workers (capped by the cluster's)."""
    total: dict[str, float] = {}
    head, cap = config.get("head_node_type"), config.get("max_workers")
    for name, node in (config.get("available_node_types") or {}).items():
        count = 1 if name == head else node.get("max_workers", cap if cap is not None else 0)
        if name != head and cap is not None:
            count = min(count, cap)
        for key, value in (node.get("resources") or {}).items():
            total[key] = total.get(key, 0) + value * count
    return total


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"   # where `ray up` leaves the config on the head


def autoscaling_config() -> dict | None:
    """The config of the autoscaler that runs the connected cluster, or None for a cluster that
    does not autoscale (a local Ray's monitor runs without a config) or whose config cannot be
    read from here: the monitor's --autoscaling-config (the driver on the head node, as README
    runs it), else `ray up`'s copy on the head."""
    import json

    import yaml
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not status:
        return None
    args = _monitor_args(json.loads(status).get("monitor_pid"))
    if args is not None:   # the monitor runs here: its flag says whether it autoscales
        path = next((Path(a.split("=", 1)[1]).expanduser() for a in args
                     if a.startswith("--autoscaling-config=")), None)
    else:
        path = Path(BOOTSTRAP_CONFIG).expanduser()
    if path is not None and path.is_file():
        return yaml.safe_load(path.read_text())
    if args is None:
        _say_unreadable_once()
    return None


@cache
def _say_unreadable_once() -> None:
    log.warning("the Ray cluster's autoscaler runs on another machine and its config is not readable "
                "here (run the driver on the head node): trials are sized from the nodes up now only")


def _monitor_args(pid: int | None, proc: Path = Path("/proc")) -> list[str] | None:
    """The command line of the cluster's monitor, None where it is not readable (another host)."""
    try:
        return (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, TypeError):
        return None


def cluster_capacity() -> dict[str, float]:
    """The resources the connected cluster has or can grow to: its live nodes, and where an
    autoscaler runs, its node types at max_workers. An autoscaling cluster starts with no worker
    (cluster.yaml: a head of CPU 0, GPU workers from 0), so the live nodes alone would size every
    trial for a CPU and one at a time, and the autoscaler would never be asked for more."""
    import ray
    live = dict(ray.cluster_resources())
    grow = node_types_capacity(autoscaling_config() or {})
    return {k: max(live.get(k, 0), grow.get(k, 0)) for k in set(live) | set(grow)}


def cpus_per_gpu(config: dict | None, live_nodes: list[dict]) -> float:
    """CPUs per GPU on the cluster's GPU nodes (their node types, else the live ones); 0 if none."""
    shapes = [n.get("resources") or {} for n in ((config or {}).get("available_node_types") or {}).values()]
    shapes += [n.get("Resources") or {} for n in live_nodes if n.get("Alive")]
    ratios = [r.get("CPU", 0) / r["GPU"] for r in shapes if r.get("GPU", 0) > 0]
    return min(ratios) if ratios else 0.0


def trial_resources(gpus_per_trial: float, cpus_per_trial: float | None) -> dict:
    """{"cpu", "gpu"} per trial; GPUs only where the cluster has or can get some (else trials would
    wait forever for a GPU that never comes). ``cpus_per_trial`` None: a GPU trial gets its GPU
    share of a GPU node's CPUs (they feed its input pipeline), a CPU trial one CPU."""
    import ray
    have_gpu = cluster_capacity().get("GPU", 0) > 0
    if gpus_per_trial > 0 and not have_gpu:
        log.warning("no GPU in the Ray cluster: trials run on CPU (%s CPU each)", cpus_per_trial or 1.0)
    gpu = gpus_per_trial if have_gpu else 0
    if cpus_per_trial is None:
        per_gpu = cpus_per_gpu(autoscaling_config(), ray.nodes()) if gpu else 0.0
        cpus_per_trial = max(1.0, math.floor(per_gpu * gpu)) if per_gpu else 1.0
    return {"cpu": cpus_per_trial, "gpu": gpu}


def auto_concurrency(resources: dict) -> int:
    """How many trials fit the cluster at once, at its largest (at least 1)."""
    total = cluster_capacity()
    slots = [math.floor(total.get("CPU", 1) / resources["cpu"])] if resources["cpu"] else []
    if resources.get("gpu"):
        slots.append(math.floor(total.get("GPU", 0) / resources["gpu"]))
    return max(1, min(slots) if slots else 1)
