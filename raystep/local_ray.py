"""The Ray a command runs on: the cluster in ``$RAY_ADDRESS`` (as ``ray job submit`` sets it), else a
local one of its own.

A local Ray is started with ``address="local"`` so a run never attaches to a cluster someone else left
running on the machine, with at least 8 logical CPUs so that a served policy, a stage's request and
grading actors and its tasks can all be placed on a 2-core machine (they mostly wait on each other),
and with workers' output kept in Ray's session logs rather than on the terminal. Its services (GCS,
raylet and object manager, workers, agents) listen on 127.0.0.1 only: see :func:`loopback_only`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

LOCAL_ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
LOOPBACK = "127.0.0.1"
SINGLE_HOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for a local-only node (its default on macOS and Windows): ``0`` keeps its address loopback."""


@contextlib.contextmanager
def loopback_only() -> Iterator[dict[str, str]]:
    """Around a local ``ray.init``: Ray's services bind 127.0.0.1 instead of every interface.

    Ray 2.60 binds its gRPC servers (GCS, raylet, object manager, core workers) to 127.0.0.1 only when
    the node's address is 127.0.0.1, and otherwise to 0.0.0.0; its agents follow the same address. But
    ``ray.init(_node_ip_address="127.0.0.1")`` alone is turned back into the machine's routable address
    unless Ray's single-host switch is off, and that switch is read when ``ray`` is imported. So this
    sets the switch in the environment (inherited by the GCS, raylet and workers started inside) and in
    the already imported module, and restores both afterwards so that a later connection to a real
    cluster from this process is unaffected. Yields the ``ray.init`` keywords to add.
    """
    from ray._private import ray_constants

    before_env, before_flag = os.environ.get(SINGLE_HOST_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_HOST_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield {"_node_ip_address": LOOPBACK}
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(SINGLE_HOST_ENV, None)
        else:
            os.environ[SINGLE_HOST_ENV] = before_env


def is_loopback_address(address: str) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``) names this machine's loopback."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in (LOOPBACK, "localhost", "::1")


LOCAL_CPUS = 8
"""Logical CPUs of a local Ray at the least (the machine's cores when more): a served engine's placement
group, the request and grading actors of a stage and the stage's own read and write tasks must all fit,
or Ray Data waits forever for a CPU that an actor holds."""


def local_start_kwargs(num_cpus: int = LOCAL_CPUS) -> dict[str, Any]:
    """``ray.init`` keywords that start a local Ray of ``num_cpus`` logical CPUs.

    Ray lets ``min(cores, CPUs)`` worker processes start at once (2 here) and prints a raylet warning
    on the terminal each time a stage's actors outnumber that several times over; the local Ray lets
    as many start as it has logical CPUs for them.
    """
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "runtime_env": {"env_vars": LOCAL_ENV},
        "_system_config": {"worker_maximum_startup_concurrency": num_cpus},
    }


def ensure_ray(min_cpus: int = LOCAL_CPUS) -> None:
    """Connect or start once per process; a no-op when Ray is already up."""
    import ray

    from raystep.console import quiet_libraries

    if ray.is_initialized():
        return
    common = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
    address = os.environ.get("RAY_ADDRESS")
    if address and is_loopback_address(address):
        with loopback_only() as local:  # a loopback-only Ray: this driver must be on 127.0.0.1 too
            ray.init(**common, **local)
    elif address:
        ray.init(**common)
    else:
        with loopback_only() as local:
            ray.init(**local_start_kwargs(max(min_cpus, os.cpu_count() or 2)), **common, **local)
    quiet_libraries()  # ray.init configures Ray's loggers: turn them down again
