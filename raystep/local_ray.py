"""The Ray a command runs on: the cluster in ``$RAY_ADDRESS`` (as ``ray job submit`` sets it), else a
local one of its own.

A local Ray is started with ``address="local"`` so a run never attaches to a cluster someone else left
running on the machine, with at least 8 logical CPUs so that a served policy, a stage's request and
grading actors and its tasks can all be placed on a 2-core machine (they mostly wait on each other),
and with workers' output kept in Ray's session logs rather than on the terminal.
"""

from __future__ import annotations

import logging
import os

LOCAL_ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def ensure_ray(min_cpus: int = 8) -> None:
    """Connect or start once per process; a no-op when Ray is already up."""
    import ray

    from raystep.console import quiet_libraries

    if ray.is_initialized():
        return
    common = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**common)
    else:
        ray.init(
            address="local",
            num_cpus=max(min_cpus, os.cpu_count() or 2),
            runtime_env={"env_vars": LOCAL_ENV},
            **common,
        )
    quiet_libraries()  # ray.init configures Ray's loggers: turn them down again
