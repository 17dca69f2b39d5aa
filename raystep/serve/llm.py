"""The GPU serving config: ``ray.serve.llm`` (vLLM) built from the run config, as a dict and as YAML.

``ray.serve.llm`` cannot be imported without vLLM, so the config is built here as plain data in
``LLMConfig``'s shape. The same dict is what ``raystep serve --engine vllm`` hands to
``build_openai_app``, what ``--emit-config`` writes for ``serve deploy``, and what a KubeRay
RayService embeds as ``serveConfigV2`` (``raystep.kuberay`` calls :func:`serve_config`): one source,
so the three cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml

from raystep.config import RunConfig

IMPORT_PATH = "ray.serve.llm:build_openai_app"
AUTH_INGRESS = "raystep.serve.llm_ingress:BearerAuthIngress"
APP_NAME = "raystep-llm"
BUCKET_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
GPU_EXTRA_HINT = "pip install 'raystep[gpu]'  (installs ray[llm] with the vLLM version Ray pins)"


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


def engine_kwargs(config: RunConfig) -> dict[str, Any]:
    """vLLM engine arguments: tensor parallelism, context, dtype, then ``serve.engine_kwargs`` on top."""
    serve = config.serve
    kwargs: dict[str, Any] = {"tensor_parallel_size": serve.tensor_parallel_size}
    if serve.max_context:
        kwargs["max_model_len"] = serve.max_context
    if config.model.dtype != "auto":
        kwargs["dtype"] = config.model.dtype
    if config.model.trust_remote_code:
        kwargs["trust_remote_code"] = True
    kwargs.update(serve.engine_kwargs)
    return kwargs


def llm_config(config: RunConfig) -> dict[str, Any]:
    """One ``LLMConfig`` as a dict: what to load, the engine arguments, and how replicas scale."""
    serve = config.serve
    source = model_source(config)
    deployment: dict[str, Any] = {
        "max_ongoing_requests": serve.max_ongoing_requests,
        "autoscaling_config": {
            "min_replicas": serve.min_replicas,
            "initial_replicas": max(serve.min_replicas, min(serve.num_replicas, serve.max_replicas)),
            "max_replicas": serve.max_replicas,
        },
    }
    out: dict[str, Any] = {
        "model_loading_config": {"model_id": serve.model_id, "model_source": source},
        "engine_kwargs": engine_kwargs(config),
        "deployment_config": deployment,
    }
    if serve.accelerator_type:
        out["accelerator_type"] = serve.accelerator_type
    return out


def app_args(config: RunConfig) -> dict[str, Any]:
    """The ``args`` of ``build_openai_app``; behind a non-loopback bind, an ingress that checks the key.

    The ingress reads the key itself from the environment variable named here, on the node, so the
    secret never appears in the Serve config (nor in a RayService manifest).
    """
    args: dict[str, Any] = {"llm_configs": [llm_config(config)]}
    if not is_loopback(config.serve.host):
        args["ingress_cls_config"] = {
            "ingress_cls": AUTH_INGRESS,
            "ingress_extra_kwargs": {"api_key_env": config.serve.api_key_env},
        }
    return args


def serve_config(config: RunConfig) -> dict[str, Any]:
    """A multi-application Serve config (``ServeDeploySchema``) for ``serve deploy`` and ``serveConfigV2``."""
    serve = config.serve
    return {
        "http_options": {"host": serve.host, "port": serve.port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": serve.route_prefix,
                "import_path": IMPORT_PATH,
                "args": app_args(config),
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
    """The ``ray.serve.llm`` OpenAI application; needs vLLM (``raystep[gpu]``).

    Callers check :func:`vllm_available` first (``raystep.serve.run.start`` does, with the install hint).
    """
    from ray.serve.llm import build_openai_app

    return build_openai_app(app_args(config))
