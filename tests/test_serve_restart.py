"""Serve after a fresh local Ray in the same process: the case a pytest session or a notebook hits."""

from __future__ import annotations

from conftest import start_local_ray


def test_serve_calls_work_after_ray_restarts_in_the_same_process():
    import ray
    from ray import serve

    from raystep.serve.run import shutdown

    ray.shutdown()
    start_local_ray()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    def hello() -> str:
        return "hi"

    serve.run(hello.bind(), name="probe", route_prefix=None)  # Serve caches its controller's handle
    first_job = ray.get_runtime_context().get_job_id()
    ray.shutdown()
    start_local_ray()
    try:
        # The new cluster's first driver has the old one's job id, so Serve still trusts the dead handle.
        assert ray.get_runtime_context().get_job_id() == first_job
        shutdown()  # raystep's own Serve call: must see that this cluster has no Serve, not fail
        assert serve.status().applications == {}
    finally:
        ray.shutdown()  # the next test that needs Ray starts a clean one
