"""A real multi-node Ray cluster and a real `mlflow server` on this machine (127.0.0.1 only).

Each test module starts its own cluster in a module fixture; the suite's shared local Ray
(tests/conftest.py) is shut first and reopened by the next test that needs it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from fault_gate import gates_folder

# a killed node refuses the check at once and is declared dead in ~8 s; a live one stalled by a
# loaded machine must miss 8 checks in a row (2 misses in a row at load 50 lost the survivor too)
HEALTH_FAST = {"health_check_failure_threshold": 8, "health_check_period_ms": 1000,
               "health_check_timeout_ms": 5000, "health_check_initial_delay_ms": 0}
NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024**2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(head_cpus: int, worker_cpus: list[int]):
    """(Cluster, [worker nodes]); the head gets the fast node-death detection."""
    import ray._private.ray_constants as rc
    if rc.ENABLE_RAY_CLUSTER:
        pytest.skip("Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: nodes would "
                    "listen on the network address; run tests/cluster in its own pytest process")
    import ray
    from ray.cluster_utils import Cluster
    gates_folder()   # before the nodes start: their workers inherit it
    ray.shutdown()   # the suite's shared local Ray (tests/conftest.py) gives way to the cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, **NODE, "_system_config": HEALTH_FAST})
    workers = [c.add_node(num_cpus=n, **NODE) for n in worker_cpus]
    c.wait_for_nodes()
    return c, workers


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc; one read per process)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return out


def descendants(pid: int, parents: dict[int, int] | None = None) -> dict[int, str]:
    """pid -> process title (argv[0]) of every process below ``pid``."""
    parents = parents if parents is not None else _parents()
    kids: dict[int, list[int]] = {}
    for child, par in parents.items():
        kids.setdefault(par, []).append(child)
    out, todo = {}, [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            try:
                out[child] = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            todo.append(child)
    return out


def kill_node(c, node) -> list[int]:
    """Lose a node as a machine loses it: its raylet and every process it started die at once
    (removing only the raylet lets a busy worker finish its task before it notices)."""
    procs = list(descendants(node.all_processes["raylet"][0].process.pid))
    c.remove_node(node, allow_graceful=False)
    for pid in procs:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return procs


class NodeWatch:
    """Which Ray task/actor names each node's worker processes ran (from their process titles,
    sampled every 0.2 s): proof of where work ran, from outside Ray."""

    def __init__(self, nodes: dict):
        self.raylets = {name: n.all_processes["raylet"][0].process.pid for name, n in nodes.items()}
        self.seen: dict[str, set[str]] = {name: set() for name in nodes}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def add(self, name: str, node) -> None:
        self.raylets[name] = node.all_processes["raylet"][0].process.pid
        self.seen.setdefault(name, set())

    def _run(self):
        while not self._stop.is_set():
            parents = _parents()
            for name, pid in list(self.raylets.items()):
                for title in descendants(pid, parents).values():
                    if title.startswith("ray::") and title.split()[0] != "ray::IDLE":
                        self.seen[name].add(title.split()[0].removeprefix("ray::"))
            time.sleep(0.2)

    def ran(self, name: str, what: str) -> bool:
        return any(what in t for t in self.seen[name])

    def running(self, what: str) -> list[str]:
        """Nodes with a process running ``what`` right now."""
        parents = _parents()
        return [name for name, pid in list(self.raylets.items())
                if any(what in t for t in descendants(pid, parents).values())]

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def record(name: str, **info) -> None:
    """Keep what a fault test did (for benchmarks/faults_table.py) when $FAULTS_RECORD names a folder."""
    folder = os.environ.get("FAULTS_RECORD")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(info, indent=1, default=str))


class MlflowServer:
    """`mlflow server` on 127.0.0.1: SQLite backend and proxied artifacts in ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.artifacts = self.root / "artifacts"

    def start(self, timeout: float = 120) -> "MlflowServer":
        return self.launch().wait(timeout)

    def launch(self) -> "MlflowServer":
        """Start the process; ``wait`` for it to answer (start the cluster in between)."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.artifacts)]
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, timeout: float = 120) -> "MlflowServer":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:   # /health answers before the store does: wait for a real API call (a loaded
                # machine's first search after a restart took over 5 s, the trials' timeout)
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                urllib.request.urlopen(f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} in {timeout} s")

    def stop(self) -> None:
        """SIGTERM its whole process group (uvicorn/gunicorn workers too), then wait."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
