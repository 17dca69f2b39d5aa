"""``raystep serve``: start the OpenAI-compatible app on Ray Serve, or emit the GPU app's Serve config.

``start(config)`` is what the demo and the evaluation tests call: it checks the bind is safe, deploys
the app for ``serve.engine`` (raystep's CPU app for ``hf``, ``ray.serve.llm`` for ``vllm``) and
returns the base URL an ``openai`` client takes. ``shutdown()`` tears Serve down again.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.request

from raystep.cli import add_config_arguments, config_from_args
from raystep.config import RunConfig
from raystep.serve.llm import (
    GPU_EXTRA_HINT,
    build_llm_app,
    is_loopback,
    model_source,
    vllm_available,
    write_serve_config,
)

APP_NAME = "raystep"


class ServeStartError(RuntimeError):
    """The app cannot be started as configured (an unsafe bind, no model, no vLLM)."""


def api_key_digest(config: RunConfig) -> str | None:
    """The hash of the key in ``$<serve.api_key_env>``; required whenever the bind is not loopback."""
    from raystep.serve.protocol import key_digest

    serve = config.serve
    key = os.environ.get(serve.api_key_env, "")
    if not key and not is_loopback(serve.host):
        raise ServeStartError(
            f"serve.host is {serve.host!r}, which is reachable from other machines, and the API key variable "
            f"${serve.api_key_env} is empty: set it (export {serve.api_key_env}=...) or bind 127.0.0.1"
        )
    return key_digest(key) if key else None


def base_url(config: RunConfig) -> str:
    """What clients pass as ``base_url``: the bound address (loopback for a wildcard bind) + ``/v1``."""
    host = config.serve.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    prefix = config.serve.route_prefix.rstrip("/")
    return f"http://{host}:{config.serve.port}{prefix}/v1"


def _cpu_app(config: RunConfig, key_digest: str | None):
    from raystep.serve.app import AppSettings, build_app

    source = model_source(config)
    if "://" in source:
        raise ServeStartError(
            f"the hf engine serves a local model folder; got {source!r} (use --engine vllm)"
        )
    if not os.path.exists(os.path.join(source, "config.json")):
        raise ServeStartError(
            f"no Hugging Face model at {source} (set serve.model or run `raystep train` first)"
        )
    serve = config.serve
    settings = AppSettings(
        model_path=os.path.abspath(source),
        model_id=serve.model_id,
        max_tokens_cap=serve.max_tokens_cap,
        max_context=serve.max_context,
        max_batch_size=serve.max_batch_size,
        batch_wait_timeout_s=serve.batch_wait_timeout_s,
        api_key_sha256=key_digest,
        dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code,
        torch_threads=max(1, int(serve.num_cpus_per_replica)) if serve.num_cpus_per_replica else None,
    )
    return build_app(
        settings,
        num_replicas=serve.num_replicas,
        min_replicas=serve.min_replicas,
        max_replicas=serve.max_replicas,
        max_ongoing_requests=serve.max_ongoing_requests,
        max_queued_requests=serve.max_queued_requests,
        num_cpus=serve.num_cpus_per_replica,
    )


def start(config: RunConfig) -> str:
    """Deploy the app for ``serve.engine`` on the current (or a new local) Ray; returns the base URL."""
    from ray import serve

    key_digest = api_key_digest(config)
    if config.serve.engine == "vllm":
        if not vllm_available():
            raise ServeStartError(f"--engine vllm needs vLLM, which is not installed: {GPU_EXTRA_HINT}")
        app = build_llm_app(config)
    else:
        app = _cpu_app(config, key_digest)
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    _check_bound(config)
    serve.run(app, name=APP_NAME, route_prefix=config.serve.route_prefix)
    return base_url(config)


def _check_bound(config: RunConfig) -> None:
    """Serve keeps its first HTTP options for the life of the cluster: fail loudly if they differ."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    if (http.host, http.port) != (config.serve.host, config.serve.port):
        raise ServeStartError(
            f"Serve is already running on this Ray cluster at {http.host}:{http.port}, not at "
            f"{config.serve.host}:{config.serve.port}: use that port, or call raystep.serve.run.shutdown() first"
        )


def shutdown() -> None:
    """Delete the app and stop Serve's actors (Ray itself keeps running)."""
    from ray import serve

    serve.shutdown()


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    """Poll ``/health`` (CPU app) until it answers 200; raises ``TimeoutError`` otherwise."""
    health = url.removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(health, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{health} did not become healthy in {timeout_s:.0f} s")
        time.sleep(0.5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--engine", choices=["hf", "vllm"], help="override serve.engine")
    parser.add_argument("--model", help="override serve.model: a model folder or bucket URI")
    parser.add_argument("--host", help="override serve.host (a non-loopback host needs $serve.api_key_env)")
    parser.add_argument("--port", type=int, help="override serve.port")
    parser.add_argument(
        "--emit-config",
        metavar="FILE",
        help="write the ray.serve.llm Serve config YAML (for `serve deploy` / RayService) and exit",
    )


def _apply_flags(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    updates = {k: getattr(args, k) for k in ("engine", "model", "host", "port") if getattr(args, k, None)}
    if not updates:
        return config
    return RunConfig.model_validate(config.model_dump() | {"serve": config.serve.model_dump() | updates})


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    config = _apply_flags(config_from_args(args), args)
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
