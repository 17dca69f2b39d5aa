"""``raystep serve``: start the OpenAI-compatible ``ray.serve.llm`` app, or emit its Serve config.

``start(config)`` is what the demo and the evaluation tests call: it checks the bind is safe, deploys
``ray.serve.llm``'s OpenAI app (vLLM on CPU or GPU, behind the Bearer-key ingress when a key is needed)
and returns the base URL an ``openai`` client takes. ``shutdown()`` tears Serve down again.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time

from raystep.config import RunConfig
from raystep.config_args import add_config_arguments, config_from_args
from raystep.serve.llm import (
    VLLM_HINT,
    build_llm_app,
    is_loopback,
    model_source,
    vllm_available,
    write_serve_config,
)

APP_NAME = "raystep"


class ServeStartError(RuntimeError):
    """The app cannot be started as configured (an unsafe bind, no model, no vLLM)."""


def check_key(config: RunConfig) -> None:
    """Refuse a bind reachable from other machines unless ``$<serve.api_key_env>`` holds a key."""
    serve = config.serve
    if not is_loopback(serve.host) and not os.environ.get(serve.api_key_env):
        raise ServeStartError(
            f"serve.host is {serve.host!r}, which is reachable from other machines, and the API key variable "
            f"${serve.api_key_env} is empty: set it (export {serve.api_key_env}=...) or bind 127.0.0.1"
        )


def base_url(config: RunConfig) -> str:
    """What clients pass as ``base_url``: the bound address (loopback for a wildcard bind) + ``/v1``."""
    host = config.serve.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    prefix = config.serve.route_prefix.rstrip("/")
    return f"http://{host}:{config.serve.port}{prefix}/v1"


def check_model(config: RunConfig) -> str:
    """The model source, checked when it is a local folder (a bucket URI is checked by the replica)."""
    source = model_source(config)
    if "://" not in source and not os.path.exists(os.path.join(source, "config.json")):
        raise ServeStartError(
            f"no Hugging Face model at {source} (set serve.model or run `raystep train` first)"
        )
    return source


def start(config: RunConfig) -> str:
    """Deploy ``ray.serve.llm``'s app on the current (or a new local) Ray; returns the base URL.

    Returns once the replicas are up (``serve.run`` waits for them), so the first request is served.
    """
    from ray import serve

    from raystep.console import quiet_libraries
    from raystep.local_ray import ensure_ray

    quiet_libraries()  # importing ray.serve sets its logger to INFO: ray.serve.llm's builder would dump its options
    check_key(config)
    check_model(config)
    if not vllm_available():
        raise ServeStartError(f"serving needs vLLM, which is not installed: {VLLM_HINT}")
    check_port(config)  # before starting Ray: a taken port fails in a second, not after the engine is up
    # serve.start alone would start Ray with the machine's cores as CPUs: on 2 cores the engine's
    # placement group takes both and the ingress replica never schedules
    ensure_ray()
    app = build_llm_app(config)
    quiet = {"log_level": "WARNING"}  # Serve's INFO lines belong in its log files, not on the terminal
    _forget_stale_serve()
    _release_idle_serve(config)
    check_port(config)
    _start_serve(config, quiet)
    _check_bound(config)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # serve.start configured it for INFO
    serve.run(app, name=APP_NAME, route_prefix=config.serve.route_prefix, logging_config=quiet)
    return base_url(config)


class Server:
    """raystep's app for an experiment that evaluates many checkpoints of one model: the engine starts
    for the first checkpoint that needs serving and every later one is loaded into it in place
    (:mod:`raystep.serve.swap`): one engine start instead of one per model. Closing shuts it down.
    """

    def __init__(self, config: RunConfig):
        self.config = config.model_copy(deep=True)
        self.config.serve.weight_swap = True
        self.url: str | None = None
        self.model: str | None = None

    def serve(self, model_dir: str | os.PathLike[str]) -> str:
        """Serve ``model_dir`` (starting the app, or loading it into the running engine); its base URL."""
        from raystep.serve.swap import check_swappable, swap_weights

        model = str(model_dir)
        if self.url is None:
            self.config.serve.model = model
            self.url = start(self.config)
        elif model != self.model:
            check_swappable(str(self.model), model)
            swap_weights(model, APP_NAME)
        self.model = model
        return self.url

    def close(self) -> None:
        if self.url is not None:
            shutdown()
            self.url = self.model = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_port(config: RunConfig) -> None:
    """Refuse a host and port this machine cannot listen on (another server holds it), in one line.

    Serve's proxy binds with ``SO_REUSEPORT``, so next to another Serve of the same user it would share
    the port (each request going to either app at random), and next to any other server it fails
    inside an actor with a long traceback. Checked only where the proxy will run, here (no
    ``$RAY_ADDRESS``), and not when this process's Serve already listens there.
    """
    serve = config.serve
    if os.environ.get("RAY_ADDRESS") or _serve_listens_at(config):
        return
    family = socket.AF_INET6 if ":" in serve.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is fine
        try:
            probe.bind((serve.host, serve.port))
        except OSError as exc:
            raise ServeStartError(
                f"cannot listen on {serve.host}:{serve.port}: {exc.strerror or exc} (another server holds "
                "the port?): choose a free one with --port or serve.port"
            ) from None


def _serve_listens_at(config: RunConfig) -> bool:
    """Whether a Serve this process is connected to already listens at ``serve.host:serve.port``."""
    import ray

    if not ray.is_initialized():
        return False
    from ray.serve.context import _get_global_client

    try:
        http = _get_global_client(raise_if_no_controller_running=True).http_config
    except Exception:  # no Serve on this cluster
        return False
    return (http.host, http.port) == (config.serve.host, config.serve.port)


START_ATTEMPTS = 3
"""``serve.start`` calls before giving up on an HTTP proxy that keeps dying while it starts."""


def _start_serve(config: RunConfig, logging_config: dict[str, str]) -> None:
    """``serve.start``, again when its HTTP proxy was killed while starting.

    The controller gives a new proxy 5 s to answer its first ready check; on a loaded 2-core machine a
    proxy process can take longer to start, and the controller kills it and starts another with a
    longer window, while ``serve.start`` fails at once with ``ActorDiedError``. The controller is up by
    then, so a second call connects to it and the restarted proxy serves.
    """
    from ray import serve
    from ray.exceptions import ActorDiedError

    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            serve.start(
                http_options={"host": config.serve.host, "port": config.serve.port},
                logging_config=logging_config,
            )
            return
        except (ActorDiedError, TimeoutError):
            if attempt == START_ATTEMPTS:
                raise
            time.sleep(2.0 * attempt)


def _check_bound(config: RunConfig) -> None:
    """Serve keeps its first HTTP options for the life of the cluster: fail loudly if they differ."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    if (http.host, http.port) != (config.serve.host, config.serve.port):
        raise ServeStartError(
            f"Serve is already running on this Ray cluster at {http.host}:{http.port}, not at "
            f"{config.serve.host}:{config.serve.port}: use that port, or stop the applications there first"
        )


def _forget_stale_serve() -> None:
    """Drop Serve's cached controller handle when that controller is gone.

    Serve caches the handle per Ray job id, and a fresh local Ray started in the same process (after
    ``ray.shutdown()``) gives its first driver the same job id, so a handle into the stopped cluster
    looks current and every Serve call fails with "Can't find actor".
    """
    import ray
    from ray.serve import context

    client = context._global_client
    if client is None:
        return
    try:
        ray.get(client._controller.check_alive.remote(), timeout=30)
    except Exception:  # the controller (or the whole cluster it lived in) is gone
        context._disconnect()


def _release_idle_serve(config: RunConfig) -> None:
    """A Serve left with no application (after :func:`shutdown`) on other HTTP options is stopped."""
    from ray import serve
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=True)
    except Exception:  # no Serve on this cluster
        return
    http = client.http_config
    if (http.host, http.port) != (config.serve.host, config.serve.port) and not serve.status().applications:
        serve.shutdown()


def shutdown() -> None:
    """Delete raystep's application; Serve's own actors stay up for the next one (or until Ray stops).

    Stopping the controller itself makes Ray print a spurious ``graceful_shutdown failed ... killed by
    ray.kill`` line, and another app on the cluster may still need it.
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    _forget_stale_serve()
    try:
        running = APP_NAME in serve.status().applications
    except RayServeException:  # Serve is not running on this cluster
        return
    if running:
        serve.delete(APP_NAME)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--judge",
        action="store_true",
        help="serve the open judge of localize.judge.serve instead of the policy",
    )
    parser.add_argument("--model", help="override serve.model: a model folder or bucket URI")
    parser.add_argument("--host", help="override serve.host (a non-loopback host needs $serve.api_key_env)")
    parser.add_argument("--port", type=int, help="override serve.port")
    parser.add_argument(
        "--emit-config",
        metavar="FILE",
        help="write the ray.serve.llm Serve config YAML (for `serve deploy` / RayService) and exit",
    )


def _apply_flags(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    updates = {k: getattr(args, k) for k in ("model", "host", "port") if getattr(args, k, None)}
    if not updates:
        return config
    return RunConfig.model_validate(config.model_dump() | {"serve": config.serve.model_dump() | updates})


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if getattr(args, "judge", False):
        from raystep.serve.llm import judge_run_config

        try:
            config = judge_run_config(config)
        except ValueError as exc:
            print(f"raystep serve --judge: {exc}", file=sys.stderr)
            return 2
    config = _apply_flags(config, args)
    if args.emit_config:
        path = write_serve_config(config, args.emit_config)
        print(f"wrote {path}: serve deploy {path}  (or paste it as a RayService's serveConfigV2)")
        return 0
    try:
        url = start(config)
    except ServeStartError as exc:
        print(f"raystep serve: {exc}", file=sys.stderr)
        return 2
    print(
        f"serving {config.serve.model_id!r} from {model_source(config)} at {url} (Ctrl-C stops)", flush=True
    )
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` (a pod stopping) shuts Serve down as Ctrl-C does
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()
    return 0
