"""Connect to Ray the same way in every stage: a running cluster for "auto", else a local one."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Use the cluster at ``address`` ("auto": the one `ray start`/`ray up` runs here), or start a
    local Ray with ``num_cpus`` logical CPUs (None: every core). Reuses an already-open session."""
    import ray
    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise ConnectionError(f"no Ray cluster at {address!r} ({exc}); start one with "
                                  "`ray start --head` or `ray up cluster.yaml`, or leave out --address "
                                  "to run Ray locally") from exc
        log.info("connected to Ray cluster at %s: %s", address, ray.cluster_resources())
        return
    # address="local": always a new local Ray; plain ray.init() would join any cluster another
    # process started on this machine. log_to_driver=False: worker chatter breaks the progress bar
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    log.info("started a local Ray: %s", ray.cluster_resources())
