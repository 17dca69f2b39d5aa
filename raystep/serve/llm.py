"""The serving config: ``ray.serve.llm`` (vLLM, on CPU or GPU) built from the run config, as plain data.

The config is built here in ``LLMConfig``'s shape, so it can be written without vLLM installed. The same
dict is what ``raystep serve`` hands to ``build_openai_app``, what ``--emit-config`` writes for
``serve deploy``, and what a KubeRay RayService embeds as ``serveConfigV2`` (``raystep.kuberay`` calls
:func:`serve_config`): one source, so the three cannot drift apart. Engine arguments and placement
come from ``raystep.engine_args``, as for sampling.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml

from raystep.config import ModelConfig, RunConfig
from raystep.engine_args import Device, engine_env, placement_bundles, resolve_device, vllm_engine_kwargs
from raystep.serve.limits import request_limits
from raystep.serve.swap import EXTENSION as SWAP_EXTENSION

IMPORT_PATH = "ray.serve.llm:build_openai_app"
AUTH_INGRESS = "raystep.serve.llm_ingress:BearerAuthIngress"
APP_NAME = "raystep-llm"
BUCKET_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
VLLM_HINT = (
    "pip install 'raystep[gpu]' on CUDA machines (ray[llm] with the vLLM Ray pins), "
    "or bash scripts/install.sh for vLLM's CPU build"
)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: the only binds that may go without an API key."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_source(config: RunConfig) -> str:
    """``serve.model`` when set, else this run's exported ``model/`` folder (a path or bucket URI)."""
    if config.serve.model:
        return config.serve.model
    run_dir = config.run_dir
    if "://" in run_dir:
        return f"{run_dir.rstrip('/')}/model"
    return str(Path(run_dir) / "model")


def llm_config(config: RunConfig, device: Device | None = None) -> dict[str, Any]:
    """One ``LLMConfig`` as a dict: what to load, the engine and its placement, and how replicas scale."""
    serve = config.serve
    device = device or resolve_device(config)
    deployment: dict[str, Any] = {
        "max_ongoing_requests": serve.max_ongoing_requests,
        "autoscaling_config": {
            "min_replicas": serve.min_replicas,
            "initial_replicas": max(serve.min_replicas, min(serve.num_replicas, serve.max_replicas)),
            "max_replicas": serve.max_replicas,
        },
    }
    if serve.max_queued_requests >= 0:
        deployment["max_queued_requests"] = serve.max_queued_requests
    engine_kwargs = vllm_engine_kwargs(config, device)
    if serve.weight_swap:  # the next checkpoint loads into the running engine (raystep.serve.swap)
        engine_kwargs = {"worker_extension_cls": SWAP_EXTENSION, **engine_kwargs}
    out: dict[str, Any] = {
        "model_loading_config": {"model_id": serve.model_id, "model_source": model_source(config)},
        "engine_kwargs": engine_kwargs,
        "placement_group_config": {"bundles": placement_bundles(config, device)},
        "runtime_env": {"env_vars": engine_env(config, device)},
        "deployment_config": deployment,
    }
    if device == "cuda" and config.engine.accelerator_type:
        out["accelerator_type"] = config.engine.accelerator_type
    return out


def judge_run_config(config: RunConfig) -> RunConfig:
    """The run config that serves the open judge of ``localize.judge.serve``: its serve section, its engine
    (``localize.judge.engine``, else the run's), and its weights as the model (dtype ``auto``, the
    policy's tokenizer not inherited). ``raystep serve --judge`` and the judge's RayService use it."""
    judge = config.localize.judge
    if judge.serve is None:
        raise ValueError("localize.judge.serve is empty: there is no open judge to serve in this config")
    model = ModelConfig(
        path=str(judge.serve.model), dtype="auto", trust_remote_code=config.model.trust_remote_code
    )
    return config.model_copy(
        update={"serve": judge.serve, "engine": judge.engine or config.engine, "model": model}
    )


def app_args(config: RunConfig, device: Device | None = None) -> dict[str, Any]:
    """The ``args`` of ``build_openai_app``, with raystep's ingress (OpenAI-shaped errors, the Bearer key,
    the request limits of ``serve.limits``).

    Off loopback the key is required; on loopback a key set on the node is enforced and none means open.
    The ingress reads the key itself from the environment variable named here, on the node, so the
    secret never appears in the Serve config (nor in a RayService manifest). The limits travel resolved
    (the prompt limit filled in from the engine's context), so the config shows what is enforced.
    """
    serve = config.serve
    return {
        "llm_configs": [llm_config(config, device)],
        "ingress_deployment_config": {"ray_actor_options": {"num_cpus": serve.ingress_cpus}},
        "ingress_cls_config": {
            "ingress_cls": AUTH_INGRESS,
            "ingress_extra_kwargs": {
                "api_key_env": serve.api_key_env,
                "require_key": not is_loopback(serve.host),
                "limits": request_limits(config).as_dict(),
            },
        },
    }


def serve_config(config: RunConfig, device: Device | None = None) -> dict[str, Any]:
    """A multi-application Serve config (``ServeDeploySchema``) for ``serve deploy`` and ``serveConfigV2``.

    A config written for a cluster is for GPUs unless ``engine.device`` says ``cpu``.
    """
    serve = config.serve
    device = device or (config.engine.device if config.engine.device != "auto" else "cuda")
    return {
        "http_options": {"host": serve.host, "port": serve.port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": serve.route_prefix,
                "import_path": IMPORT_PATH,
                "args": app_args(config, device),
            }
        ],
    }


def serve_config_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(serve_config(config), sort_keys=False)


def write_serve_config(config: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write the Serve config YAML (the file ``serve deploy`` takes)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(serve_config_yaml(config))
    return out


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def build_llm_app(config: RunConfig) -> Any:
    """The ``ray.serve.llm`` OpenAI application; needs vLLM (``raystep[gpu]`` or ``raystep[cpu]``).

    Callers check :func:`vllm_available` first (``raystep.serve.run.start`` does, with the install hint).
    """
    from ray.serve.llm import build_openai_app

    return build_openai_app(app_args(config))
