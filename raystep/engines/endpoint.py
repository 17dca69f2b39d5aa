"""The ``endpoint`` engine: rows sent as completions requests to an already served policy.

One ``ray.serve.llm`` app (or any OpenAI-compatible vLLM server) can then answer every stage of a run,
collect, rollout localization, rectify and evaluation, so the engine starts once instead of once per
stage. Each row keeps its own seed (vLLM seeds each request's generator, so a row draws the same text
whatever else is in flight); the rows of one prompt, whose seeds are consecutive, share one request
with ``n`` choices. A request that fails after its retries keeps its rows, with
``finish_reason = "error"`` and the message, like every engine.
"""

from __future__ import annotations

import asyncio
import json
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


def request_groups(prompts: list[str], sampling: list[dict[str, Any]], most: int) -> list[list[int]]:
    """Row indices per request: rows with the same prompt and settings whose seeds run s, s+1, ...
    (:func:`raystep.engines.base.sample_seeds`) go as one request with ``n`` choices seeded s, at most
    ``most`` to a request. vLLM seeds choice j with s + j, so each row draws what it would alone."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, (prompt, s) in enumerate(zip(prompts, sampling, strict=True)):
        rest = json.dumps({k: v for k, v in s.items() if k != "seed"}, sort_keys=True)
        by_key.setdefault((prompt, rest), []).append(i)
    groups: list[list[int]] = []
    for rows in by_key.values():
        rows.sort(key=lambda i: sampling[i]["seed"])
        group = [rows[0]]
        for i in rows[1:]:
            if len(group) < most and sampling[i]["seed"] == sampling[group[-1]]["seed"] + 1:
                group.append(i)
            else:
                groups.append(group)
                group = [i]
        groups.append(group)
    return groups


def answered_row(
    row: dict[str, Any], sampling: dict[str, Any], result: dict[str, Any], j: int, n: int
) -> dict:
    """Choice ``j`` of a request of ``n`` choices as the contract's output row (or the row with its error)."""
    if result.get("error"):
        return error_output({**row, "sampling": sampling}, result["error"])
    if n == 1:
        text, finish, tokens = (
            result["response"],
            result.get("finish_reason"),
            result.get("completion_tokens"),
        )
    else:
        choices = result.get("choices") or []
        counts = result.get("choice_tokens") or []
        if j >= len(choices) or j >= len(counts) or counts[j] is None:
            return error_output(
                {**row, "sampling": sampling},
                f"the endpoint answered a request of n={n} without {n} choices and their token_ids (a server "
                "other than vLLM?): set sampling.endpoint.max_rows_per_request=1",
            )
        text, finish, tokens = choices[j], result["finish_reasons"][j], counts[j]
    return {
        **row,
        "sampling": sampling,
        "generated_text": text,
        "num_generated_tokens": int(tokens or 0),
        "finish_reason": finish if finish in ("stop", "length") else "stop",
        "generation_error": None,
    }


class EndpointUDF:
    """Ray Data class-based UDF: a batch of contract rows sent concurrently, answered rows back.

    The samples of one prompt (consecutive seeds) go as one request with ``n`` choices: on a small
    machine each request's trip through Serve's proxy, ingress and engine server costs more than its
    tokens (``benchmarks/bench_endpoint_batching.py``)."""

    def __init__(self, endpoint_json: str, defaults: dict[str, Any] | None = None):
        self.endpoint = EndpointConfig.model_validate_json(endpoint_json)
        self.defaults = defaults or {}

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist(self.process(batch.to_pylist()))

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sampling = [normalize_sampling(r.get("sampling"), self.defaults) for r in rows]
        groups = request_groups([r["prompt"] for r in rows], sampling, self.endpoint.max_rows_per_request)
        requests = [
            {**request_sampling(sampling[g[0]], n=len(g)), "return_token_ids": len(g) > 1} for g in groups
        ]
        results = asyncio.run(_complete_all(self.endpoint, [rows[g[0]]["prompt"] for g in groups], requests))
        out: list[dict[str, Any]] = [{} for _ in rows]
        for group, result in zip(groups, results, strict=True):
            for j, i in enumerate(group):
                out[i] = answered_row(rows[i], sampling[i], result, j, len(group))
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
