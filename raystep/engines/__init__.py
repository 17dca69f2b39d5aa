"""Generation engines behind one row contract (see ``raystep.engines.base``), chosen by ``sampling.engine``.

``build_generator(config)`` returns a ``Dataset -> Dataset`` function: rows with ``prompt`` and
``sampling`` in, the same rows plus ``generated_text``, ``num_generated_tokens``, ``finish_reason`` and
``generation_error`` out, whichever engine runs (``hf``: a Ray Data actor stage around ``transformers``;
``vllm``: ``ray.data.llm``'s vLLM processor). The pipeline never forks on the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raystep.config import RunConfig
from raystep.engine_args import resolve_device

if TYPE_CHECKING:
    from ray.data import Dataset

Generator = Callable[["Dataset"], "Dataset"]


def sampling_defaults(config: RunConfig, sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine-neutral sampling dict from ``config.sampling``, with ``sampling`` overrides on top."""
    s = config.sampling
    out: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_new_tokens": s.max_new_tokens,
        "seed": s.seed,
        "stop": list(s.stop),
    }
    out.update(sampling or {})
    return out


def prompt_tokenizer(config: RunConfig) -> Any:
    """The tokenizer ``steps.build_prompt`` needs for the ``chat`` template (None for the others):
    ``model.tokenizer`` or ``model.path``, honouring ``model.trust_remote_code``."""
    if config.model.template != "chat":
        return None
    from transformers import AutoTokenizer

    m = config.model
    return AutoTokenizer.from_pretrained(m.tokenizer or m.path, trust_remote_code=m.trust_remote_code)


_WORKER_CONFIGS: dict[str, tuple[RunConfig, Any]] = {}


def config_and_tokenizer(config_json: str) -> tuple[RunConfig, Any]:
    """In a Ray Data worker: the validated config and its prompt tokenizer, loaded once per process."""
    if config_json not in _WORKER_CONFIGS:
        _WORKER_CONFIGS.clear()
        config = RunConfig.model_validate_json(config_json)
        _WORKER_CONFIGS[config_json] = (config, prompt_tokenizer(config))
    return _WORKER_CONFIGS[config_json]


def build_generator(config: RunConfig, sampling: dict[str, Any] | None = None) -> Generator:
    """The configured engine as a ``Dataset -> Dataset`` function.

    Rows keep their own ``sampling``; ``sampling`` here only fills keys a row lacks. Engine resources
    (replicas, batch size, GPUs, tensor parallelism) come from ``config.sampling``.
    """
    defaults = sampling_defaults(config, sampling)
    if config.sampling.engine == "vllm":
        from raystep.engines.vllm import build_vllm_generator

        return build_vllm_generator(config, defaults)
    if config.sampling.engine == "endpoint":
        return build_endpoint_generator(config, defaults)
    return build_hf_generator(config, defaults)


def build_endpoint_generator(config: RunConfig, defaults: dict[str, Any]) -> Generator:
    """Requests to a served policy from ``sampling.concurrency`` light Ray Data actors (no model here)."""
    from ray.data import ActorPoolStrategy

    from raystep.engines.endpoint import EndpointUDF

    s = config.sampling

    def generate(ds: Dataset) -> Dataset:
        return ds.map_batches(
            EndpointUDF,
            fn_constructor_kwargs={"endpoint_json": s.endpoint.model_dump_json(), "defaults": defaults},
            batch_size=s.batch_size,
            batch_format="pyarrow",
            # a fixed pool: an autoscaling one changes how requests meet in the engine's batches run to run,
            # and with them (batched float math) which tokens a seeded sample draws
            compute=ActorPoolStrategy(size=s.concurrency),
            # an HTTP client: a quarter CPU, so that beside a served engine's placement group the stage's
            # read and write tasks still find a CPU (with 4 CPUs and a whole one per actor they never did)
            num_cpus=0.25,
        )

    return generate


def build_hf_generator(config: RunConfig, defaults: dict[str, Any]) -> Generator:
    """``transformers`` generate as a Ray Data actor pool (``sampling.concurrency`` replicas)."""
    from ray.data import ActorPoolStrategy

    from raystep.engines.hf import HFEngineUDF

    s, m = config.sampling, config.model

    def generate(ds: Dataset) -> Dataset:
        return ds.map_batches(
            HFEngineUDF,
            fn_constructor_kwargs={
                "model_path": m.path,
                "defaults": defaults,
                "tokenizer": m.tokenizer,
                "dtype": m.dtype,
                "trust_remote_code": m.trust_remote_code,
                "batch_size": s.batch_size,
            },
            batch_size=s.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=s.concurrency),
            num_cpus=1,
            num_gpus=1 if resolve_device(config) == "cuda" else None,
        )

    return generate
