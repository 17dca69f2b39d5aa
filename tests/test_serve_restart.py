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


def test_serve_start_is_tried_again_when_its_proxy_dies_while_starting(monkeypatch):
    """On a loaded machine the controller kills a proxy slow to start and ``serve.start`` fails at once
    with ``ActorDiedError`` (seen here under a load average of 40); a second call connects to the
    controller, which has restarted the proxy. Other errors, and a proxy that keeps dying, still fail."""
    import pytest
    from ray import serve
    from ray.exceptions import ActorDiedError

    from raystep.config import load_config
    from raystep.serve import run as serve_run

    calls: list[dict] = []

    def flaky(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise ActorDiedError()

    monkeypatch.setattr(serve, "start", flaky)
    monkeypatch.setattr(serve_run.time, "sleep", lambda _s: None)
    config = load_config(None, ["serve.port=8499"])
    serve_run._start_serve(config, {"log_level": "WARNING"})
    assert len(calls) == 2 and calls[1]["http_options"] == {"host": "127.0.0.1", "port": 8499}

    def dead(**_kwargs):
        calls.append({})
        raise ActorDiedError()

    calls.clear()
    monkeypatch.setattr(serve, "start", dead)
    with pytest.raises(ActorDiedError):
        serve_run._start_serve(config, {"log_level": "WARNING"})
    assert len(calls) == serve_run.START_ATTEMPTS

    def refused(**_kwargs):
        calls.append({})
        raise ValueError("bad http options")

    calls.clear()
    monkeypatch.setattr(serve, "start", refused)
    with pytest.raises(ValueError):
        serve_run._start_serve(config, {"log_level": "WARNING"})
    assert len(calls) == 1
