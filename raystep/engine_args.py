"""vLLM engine arguments and placement from the ``engine`` section, for every place that starts vLLM.

Sampling (``ray.data.llm``), rollouts (``vllm.LLM`` in a localizer actor) and serving (``ray.serve.llm``)
all load the policy through these functions, so CPU and GPU differ only in what the hardware decides:
the device, the executor backend, the KV-cache size and the Ray bundles. Nothing here imports vLLM.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from raystep.config import RunConfig

Device = Literal["cuda", "cpu"]


def resolve_device(config: RunConfig) -> Device:
    """``engine.device``, or for ``auto`` whether the Ray cluster (or, without Ray, this machine) has GPUs."""
    if config.engine.device != "auto":
        return config.engine.device
    import ray

    if ray.is_initialized():
        return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def vllm_engine_kwargs(config: RunConfig, device: Device) -> dict[str, Any]:
    """``vllm.EngineArgs`` keywords: the model's dtype and context, then what the device needs.

    On CPU the engine runs eager (no CUDA graphs) in float32 unless the config says otherwise, with
    the multiprocessing executor inside its Ray actor, and without chunked prefill: a seeded request
    whose prompt is split across steps makes vLLM 0.29 rewind its generator, which CPU generators
    cannot do (``RuntimeError: CPU Generator does not use offset``), and every row here is seeded.
    ``engine.vllm_kwargs`` wins over everything.
    """
    e, m = config.engine, config.model
    kwargs: dict[str, Any] = {
        "enable_prefix_caching": e.enable_prefix_caching,
        "trust_remote_code": m.trust_remote_code,
    }
    if m.tokenizer:
        kwargs["tokenizer"] = m.tokenizer
    if e.max_model_len is not None:
        kwargs["max_model_len"] = e.max_model_len
    if e.max_num_seqs is not None:
        kwargs["max_num_seqs"] = e.max_num_seqs
    if device == "cpu":
        kwargs.update(
            dtype="float32" if m.dtype == "auto" else m.dtype,
            enforce_eager=True if e.enforce_eager is None else e.enforce_eager,
            distributed_executor_backend="mp",
            enable_chunked_prefill=False,
        )
    else:
        kwargs.update(
            dtype=m.dtype,
            tensor_parallel_size=e.tensor_parallel_size,
            gpu_memory_utilization=e.gpu_memory_utilization,
        )
        if e.enforce_eager is not None:
            kwargs["enforce_eager"] = e.enforce_eager
    kwargs.update(e.vllm_kwargs)
    return kwargs


def placement_bundles(config: RunConfig, device: Device) -> list[dict[str, float]]:
    """Ray bundles of one engine replica: one per GPU of tensor parallelism, or CPUs on CPU."""
    if device == "cpu":
        return [{"CPU": config.engine.cpus_per_replica}]
    return [{"GPU": 1, "CPU": 1} for _ in range(config.engine.tensor_parallel_size)]


def engine_env(config: RunConfig, device: Device) -> dict[str, str]:
    """Environment variables of an engine's process: the CPU KV-cache size, quiet logs.

    Variables the submitting Ray job already sets are left out: its workers inherit them, and
    ``ray.data.llm`` re-``ray.init``s with this env, which Ray refuses when a key is set twice.
    """
    env = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(config.engine.cpu_kv_cache_gib)
    job_env = _job_env_vars()
    return {key: value for key, value in env.items() if key not in job_env}


def _job_env_vars() -> dict[str, str]:
    """The env vars of the ``ray job submit`` runtime env this driver runs under (none outside a job)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    return (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}
