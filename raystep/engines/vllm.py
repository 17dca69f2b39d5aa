"""The ``vllm`` engine: a thin use of ``ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))``.

vLLM runs only on CUDA machines (``pip install -e .[gpu]``, which pins ``ray[llm]`` to the Ray
version). Everything here except ``build_vllm_generator`` is plain Python that is tested without vLLM:
the processor config (built from ``config.sampling`` and ``config.model``), ``to_vllm_row`` (our row
contract -> the processor's ``prompt`` + ``sampling_params``) and ``from_vllm_row`` (its output ->
our columns). The processor keeps one completion per row, so N samples are N fanned-out rows; prefix
caching makes those N rows cost little more than one prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from raystep.config import RunConfig
from raystep.engines.base import normalize_sampling

if TYPE_CHECKING:
    from ray.data import Dataset

PROMPT_COPY = "raystep_prompt"
"""Our prompt, kept aside: vLLM's error rows carry only a truncated copy of it."""
SAMPLING_COPY = "raystep_sampling"

VLLM_COLUMNS: frozenset[str] = frozenset(
    {
        "sampling_params",
        "prompt_token_ids",
        "tokenized_prompt",
        "generated_tokens",
        "num_input_tokens",
        "metrics",
        "embeddings",
        "logprobs",
        "prompt_logprobs",
        "request_id",
        "batch_uuid",
        "time_taken_llm",
        "params",
        "__inference_error__",
        PROMPT_COPY,
        SAMPLING_COPY,
    }
)
"""Columns the processor adds (or we add for it) that are dropped from the output rows."""


def processor_config_kwargs(config: RunConfig) -> dict[str, Any]:
    """The ``vLLMEngineProcessorConfig`` arguments for this run (a plain dict, testable anywhere).

    Prompts arrive fully templated, so the chat-template stage is off. ``concurrency`` is a fixed pool
    of ``sampling.concurrency`` replicas; failed rows are kept with their error instead of failing
    the whole dataset.
    """
    s, m = config.sampling, config.model
    engine_kwargs: dict[str, Any] = {
        "enable_prefix_caching": s.enable_prefix_caching,
        "tensor_parallel_size": s.tensor_parallel_size,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "dtype": m.dtype,
        "trust_remote_code": m.trust_remote_code,
    }
    if s.max_model_len is not None:
        engine_kwargs["max_model_len"] = s.max_model_len
    if m.tokenizer:
        engine_kwargs["tokenizer"] = m.tokenizer
    return {
        "model_source": m.path,
        "engine_kwargs": engine_kwargs,
        "batch_size": s.batch_size,
        "concurrency": (s.concurrency, s.concurrency),
        "chat_template_stage": False,
        "tokenize_stage": True,
        "detokenize_stage": True,
        "should_continue_on_error": True,
    }


def build_processor_config(config: RunConfig) -> Any:
    """``ray.data.llm.vLLMEngineProcessorConfig`` for this run (the class imports without vLLM)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(**processor_config_kwargs(config))


def to_vllm_sampling(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """Our sampling dict -> vLLM ``SamplingParams`` keyword arguments (one completion per row)."""
    return {
        "n": 1,
        "temperature": float(sampling["temperature"]),
        "top_p": float(sampling["top_p"]),
        "max_tokens": int(sampling["max_new_tokens"]),
        "seed": int(sampling["seed"]),
        "stop": list(sampling["stop"]) or None,
    }


def to_vllm_row(row: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Preprocess: our contract row -> the processor's (``prompt``, ``sampling_params``) + pass-through."""
    sampling = normalize_sampling(row.get("sampling"), defaults)
    return {
        **row,
        "sampling": sampling,
        "prompt": row["prompt"],
        "sampling_params": to_vllm_sampling(sampling),
        PROMPT_COPY: row["prompt"],
        SAMPLING_COPY: sampling,
    }


def from_vllm_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Postprocess: the processor's output row -> our contract row (pass-through columns kept).

    vLLM's output has no finish reason, so it is inferred: ``length`` when the token budget was
    spent, else ``stop``. A row with ``__inference_error__`` becomes ``finish_reason = "error"``
    with its message in ``generation_error``.
    """
    error = row.get("__inference_error__") or None
    sampling = row.get(SAMPLING_COPY) or row.get("sampling") or {}
    out = {k: v for k, v in row.items() if k not in VLLM_COLUMNS}
    out["prompt"] = row.get(PROMPT_COPY) or row.get("prompt", "")
    out["sampling"] = sampling
    if error:
        out.update(
            generated_text="", num_generated_tokens=0, finish_reason="error", generation_error=str(error)
        )
        return out
    count = int(row.get("num_generated_tokens") or 0)
    max_tokens = int(sampling.get("max_new_tokens") or 0)
    out.update(
        generated_text=str(row.get("generated_text") or ""),
        num_generated_tokens=count,
        finish_reason="length" if max_tokens and count >= max_tokens else "stop",
        generation_error=None,
    )
    return out


def build_vllm_processor(config: RunConfig, defaults: Mapping[str, Any]) -> Any:
    """``ray.data.llm.build_processor`` with our pre/postprocess (builds without vLLM; runs only with it)."""
    from ray.data.llm import build_processor

    fixed_defaults = dict(defaults)
    return build_processor(
        build_processor_config(config),
        preprocess=lambda row: to_vllm_row(row, fixed_defaults),
        postprocess=from_vllm_row,
    )


def build_vllm_generator(config: RunConfig, defaults: Mapping[str, Any]) -> Any:
    """The vLLM processor as a ``Dataset -> Dataset`` function (needs vLLM and GPUs at run time).

    Error rows bypass a processor's postprocess, so ``finalize_vllm_row`` runs over every row
    afterwards (it maps those and leaves already-mapped rows as they are).
    """
    processor = build_vllm_processor(config, defaults)

    def generate(ds: Dataset) -> Dataset:
        return processor(ds).map(finalize_vllm_row)

    return generate


def finalize_vllm_row(row: dict[str, Any]) -> dict[str, Any]:
    """Map error rows (which skipped postprocess) and drop the processor's error column."""
    if row.get("__inference_error__"):
        return from_vllm_row(row)
    return {k: v for k, v in row.items() if k != "__inference_error__"}
