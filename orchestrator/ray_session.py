"""Connecting to Ray the same way in every stage (a running cluster for "auto", else a local
one) and sizing trials (shared by `preprocess`, `tune`, `retrain` and `run`)."""
from __future__ import annotations

import logging
import math
import os
import signal
from contextlib import contextmanager
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
    has GPUs and 0 where it has none. Never 0 by accident on a GPU cluster: Ray hides the GPUs
    (CUDA_VISIBLE_DEVICES="") from a process that reserved none, so it would train on the CPU."""
    import ray
    if asked is not None:
        return asked
    return default if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def trial_resources(gpus_per_trial: float, cpus_per_trial: float) -> dict:
    """{"cpu", "gpu"} per trial; GPUs only where the cluster has some (else trials would
    wait forever for a GPU that never comes)."""
    import ray
    have_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if gpus_per_trial > 0 and not have_gpu:
        log.warning("no GPU in the Ray cluster: trials run on CPU (%s CPU each)", cpus_per_trial)
    return {"cpu": cpus_per_trial, "gpu": gpus_per_trial if have_gpu else 0}


def auto_concurrency(resources: dict) -> int:
    """How many trials fit the cluster at once (at least 1)."""
    import ray
    total = ray.cluster_resources()
    slots = [math.floor(total.get("CPU", 1) / resources["cpu"])] if resources["cpu"] else []
    if resources.get("gpu"):
        slots.append(math.floor(total.get("GPU", 0) / resources["gpu"]))
    return max(1, min(slots) if slots else 1)
