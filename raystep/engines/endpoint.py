"""The ``endpoint`` engine: rows sent as completions requests to an already served policy.

One ``ray.serve.llm`` app (or any OpenAI-compatible vLLM server) can then answer every stage of a run,
collect, rollout localization, rectify and evaluation, so the engine starts once instead of once per
stage. Each row is one request with its own seed (vLLM seeds each request's generator, so a row draws
the same text whatever else is in flight); a request that fails after its retries keeps its row, with
``finish_reason = "error"`` and the message, like every engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from raystep.config import EndpointConfig
from raystep.endpoint import EndpointClient
from raystep.engines.base import derive_seed, error_output, normalize_sampling
from raystep.retry import api_key


def request_sampling(sampling: Mapping[str, Any], n: int = 1) -> dict[str, Any]:
    """Our sampling dict -> the request fields ``raystep.endpoint.request_payload`` takes."""
    return {
        "max_tokens": int(sampling["max_new_tokens"]),
        "temperature": float(sampling["temperature"]),
        "top_p": float(sampling["top_p"]),
        "seed": int(sampling["seed"]),
        "stop": list(sampling.get("stop") or []),
        "n": n,
    }


def client_for(endpoint: EndpointConfig) -> EndpointClient:
    return EndpointClient(
        endpoint.base_url,
        endpoint.model,
        api="completions",
        api_key=api_key(endpoint.api_key_env),
        concurrency=endpoint.concurrency,
        max_retries=endpoint.max_retries,
        timeout_s=endpoint.timeout_s,
    )


async def _complete_all(endpoint: EndpointConfig, prompts: list[str], sampling: list[dict]) -> list[dict]:
    client = client_for(endpoint)
    try:
        return await asyncio.gather(
            *(client.complete({"prompt": p}, s) for p, s in zip(prompts, sampling, strict=True))
        )
    finally:
        await client.close()


class EndpointUDF:
    """Ray Data class-based UDF: a batch of contract rows sent concurrently, answered rows back."""

    def __init__(self, endpoint_json: str, defaults: dict[str, Any] | None = None):
        self.endpoint = EndpointConfig.model_validate_json(endpoint_json)
        self.defaults = defaults or {}

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist(self.process(batch.to_pylist()))

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sampling = [normalize_sampling(r.get("sampling"), self.defaults) for r in rows]
        results = asyncio.run(
            _complete_all(self.endpoint, [r["prompt"] for r in rows], [request_sampling(s) for s in sampling])
        )
        out = []
        for row, s, res in zip(rows, sampling, results, strict=True):
            if res.get("error"):
                out.append(error_output({**row, "sampling": s}, res["error"]))
                continue
            finish = res.get("finish_reason") or "stop"
            out.append(
                {
                    **row,
                    "sampling": s,
                    "generated_text": res["response"],
                    "num_generated_tokens": int(res.get("completion_tokens") or 0),
                    "finish_reason": finish if finish in ("stop", "length") else "stop",
                    "generation_error": None,
                }
            )
        return out


class EndpointSampler:
    """Rollouts from a served policy: ``n`` continuations of each prefix in one request (``n`` choices)."""

    tokenizer = None

    def __init__(self, endpoint: EndpointConfig):
        self.endpoint = endpoint

    def sample(self, prompts: list[str], n: int, sampling: dict[str, Any]) -> list[list[str]]:
        base = normalize_sampling(
            sampling, {"temperature": 0.8, "top_p": 1.0, "max_new_tokens": 1024, "seed": 0}
        )
        requests = [request_sampling({**base, "seed": derive_seed(base["seed"], p)}, n) for p in prompts]
        results = asyncio.run(_complete_all(self.endpoint, prompts, requests))
        failed = [r["error"] for r in results if r.get("error")]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(prompts)} rollout requests failed: {failed[0]}")
        return [r.get("choices") or [r["response"]] for r in results]
