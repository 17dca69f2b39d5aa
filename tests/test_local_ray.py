"""A local Ray started by raystep listens on 127.0.0.1 only: checked on the sockets of its process tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts a Ray of its own in a subprocess (about 10 s)

PROBE = """
import json, os
import psutil
import ray
from ray._private import ray_constants
from raystep.local_ray import SINGLE_HOST_ENV, ensure_ray

ensure_ray(min_cpus=2)

@ray.remote
def pid():
    return os.getpid()

ray.get([pid.remote() for _ in range(2)])  # workers are up and listening too
me = psutil.Process()
listening = sorted(
    {(c.laddr.ip, p.name()) for p in [me, *me.children(recursive=True)] for c in p.net_connections("tcp")
     if c.status == psutil.CONN_LISTEN}
)
node_ip = ray._private.worker.global_worker.node.node_ip_address
restored = (os.environ.get(SINGLE_HOST_ENV), ray_constants.ENABLE_RAY_CLUSTER)
ray.shutdown()
print(json.dumps({"listening": listening, "node_ip": node_ip, "restored": restored}))
"""


def test_a_local_ray_binds_its_services_to_loopback_only(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["node_ip"] == "127.0.0.1"
    names = {name for _, name in seen["listening"]}
    assert {"gcs_server", "raylet"} <= names, seen["listening"]
    assert [a for a in seen["listening"] if a[0] not in ("127.0.0.1", "::ffff:127.0.0.1")] == []
    assert seen["restored"] == [None, True]  # a later connection to a real cluster is unaffected


def test_a_driver_joining_a_loopback_ray_joins_on_loopback():
    """A Ray whose services listen on 127.0.0.1 only is joined through ``$RAY_ADDRESS`` on 127.0.0.1
    too (a driver on the machine's routable address would wait for a raylet there forever)."""
    from raystep.local_ray import is_loopback_address

    assert is_loopback_address("127.0.0.1:6379") and is_loopback_address("ray://localhost:10001")
    assert is_loopback_address("[::1]:6379")
    assert not is_loopback_address("10.0.0.5:6379") and not is_loopback_address("auto")


MANY_ACTORS = """
import time
import ray
from raystep.local_ray import ensure_ray

ensure_ray()

@ray.remote(num_cpus=0.25)
class Light:
    def ping(self):
        return 1

actors = [Light.remote() for _ in range(24)]
print("answered", sum(ray.get([a.ping.remote() for a in actors])), flush=True)
time.sleep(2)  # the raylet's warnings reach the driver a moment later
ray.shutdown()
"""


def test_a_stage_starting_many_actors_prints_no_raylet_warning(tmp_path):
    """24 light actors (a stage's request and grading actors on the 8 logical CPUs) start without the
    raylet's "N PYTHON worker processes have been started ... startup concurrency (2)" warning, which
    Ray prints on the driver's terminal whatever ``log_to_driver`` says."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", MANY_ACTORS],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "answered 24" in done.stdout
    output = done.stdout + done.stderr
    assert "worker processes have been started" not in output, output[-2000:]
