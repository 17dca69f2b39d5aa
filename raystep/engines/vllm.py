"""The ``vllm`` engine: a thin use of ``ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))``.

The same code runs on GPUs (``raystep[gpu]``: vLLM through ``ray[llm]``) and on CPUs (``raystep[cpu]``:
vLLM's CPU build); ``raystep.engine_args`` turns the ``engine`` section and the hardware into engine
arguments and Ray bundles. ``to_vllm_row`` maps our row contract to the processor's ``prompt`` +
``sampling_params`` and ``from_vllm_row`` maps its output back. The processor keeps one completion
per row, so N samples are N fanned-out rows; prefix caching makes those N rows cost little more than
one prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from raystep.config import RunConfig
from raystep.engine_args import Device, engine_env, placement_bundles, resolve_device, vllm_engine_kwargs
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


ROWS_IN_FLIGHT_PER_SEQ = 4
"""Rows a sampling replica keeps in flight per sequence slot of its engine (``engine.max_num_seqs``)."""


def processor_config_kwargs(config: RunConfig, device: Device | None = None) -> dict[str, Any]:
    """The ``vLLMEngineProcessorConfig`` arguments for this run (a plain dict, testable anywhere).

    Prompts arrive fully templated, so the chat-template stage is off. ``concurrency`` is a fixed pool
    of ``sampling.concurrency`` replicas; failed rows are kept with their error instead of failing
    the whole dataset.
    """
    device = device or resolve_device(config)
    out: dict[str, Any] = {
        "model_source": config.model.path,
        "engine_kwargs": vllm_engine_kwargs(config, device),
        "batch_size": config.sampling.batch_size,
        # rows in flight: 4x what the engine's scheduler runs at once, so a finished batch's slots are
        # refilled from its queue at once instead of waiting for the next batch (benchmarks/bench_generation.py)
        "max_concurrent_batches": -(
            -ROWS_IN_FLIGHT_PER_SEQ * (config.engine.max_num_seqs or 256) // config.sampling.batch_size
        ),
        "concurrency": (config.sampling.concurrency, config.sampling.concurrency),
        "placement_group_config": {"bundles": placement_bundles(config, device)},
        "runtime_env": {"env_vars": engine_env(config, device)},
        "chat_template_stage": False,
        # separate tokenizer actors keep CPU work off a GPU's engine; on CPU they only take cores
        "tokenize_stage": device == "cuda",
        "detokenize_stage": device == "cuda",
        "should_continue_on_error": True,
    }
    if device == "cuda" and config.engine.accelerator_type:
        out["accelerator_type"] = config.engine.accelerator_type
    return out


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
    """The vLLM processor as a ``Dataset -> Dataset`` function (needs vLLM at run time).

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
