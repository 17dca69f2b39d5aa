"""The cluster-scale path: the same requests through Ray Data's ``HttpRequestProcessorConfig``.

``ray.data.llm.build_processor`` with an HTTP processor imports and runs without vLLM (Ray 2.60), so
the requests go out from a pool of Ray actors spread over the cluster, and results stream back to the
driver, which grades and appends them exactly like the local client does (same rows, same files).

Differences from the local path, by Ray's design: per-request latency and attempt counts are not
reported (None), and a request that still fails after ``eval.max_retries`` retries fails the Ray Data
job; rows already streamed back are kept in ``samples.jsonl``, so a rerun resumes after them. An HTTP
error the server answers with a JSON body (e.g. 400) is kept in the row's ``error``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from raystep.config import EvalConfig
from raystep.endpoint import failed_result, parse_response, request_payload
from raystep.retry import api_key

ACTOR_CPUS = 0.25
"""HTTP actors mostly wait on the network: a quarter CPU each keeps them from starving the cluster."""


def endpoint_url(cfg: EvalConfig) -> str:
    route = "chat/completions" if cfg.api == "chat" else "completions"
    return f"{cfg.base_url.rstrip('/')}/{route}"


def http_response_to_result(api: str, response: Any) -> dict[str, Any]:
    """The result columns from one ``http_response`` (an error body is kept as the row's error)."""
    result: dict[str, Any] = {"latency_s": None, "attempts": None}
    if not isinstance(response, dict) or response.get("error") or not response.get("choices"):
        result.update(failed_result(f"HTTP error response: {str(response)[:1000]}"))
        return result
    try:
        result.update(parse_response(api, response), error=None)
    except ValueError as exc:
        result.update(failed_result(str(exc)))
    return result


def send_with_ray_data(
    todo: list[dict[str, Any]], cfg: EvalConfig, flush: Callable[[list[dict[str, Any]]], None]
) -> None:
    """Send ``todo`` through a Ray Data HTTP processor; call ``flush`` with merged item+result rows."""
    import aiohttp
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    from raystep.evaluate.benchmark import EvalError, sampling_for

    by_key = {(i["id"], i["sample"]): i for i in todo}
    api, model = cfg.api, cfg.model
    payload_rows = [
        {
            "id": i["id"],
            "sample": i["sample"],
            "payload": request_payload(i, model, api, sampling_for(cfg, i["sample"])),
        }
        for i in todo
    ]
    headers = {"Authorization": f"Bearer {api_key(cfg.api_key_env)}"}
    batch_size = max(1, min(16, cfg.concurrency))
    processor = build_processor(
        HttpRequestProcessorConfig(
            url=endpoint_url(cfg),
            headers=headers,
            batch_size=batch_size,
            concurrency=max(1, min(cfg.concurrency, 8)),
            max_retries=cfg.max_retries,
            base_retry_wait_time_in_s=0.5,
            http_request_stage={"num_cpus": ACTOR_CPUS},
            session_factory=functools.partial(
                aiohttp.ClientSession, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)
            ),
        ),
        preprocess=lambda row: {"payload": row["payload"]},
        postprocess=lambda row: {
            "id": row["id"],
            "sample": int(row["sample"]),
            **http_response_to_result(api, row["http_response"]),
        },
    )
    ds = processor(ray.data.from_items(payload_rows))
    buffer: list[dict[str, Any]] = []
    written = 0
    try:
        for out in ds.iter_rows():
            item = by_key[(str(out["id"]), int(out["sample"]))]
            result = {k: _plain(v) for k, v in out.items() if k not in ("id", "sample")}
            buffer.append({**item, **result})
            if len(buffer) >= batch_size:
                flush(buffer)
                written += len(buffer)
                buffer = []
    except Exception as exc:
        if buffer:
            flush(buffer)
            written += len(buffer)
        first = next((line for line in str(exc).splitlines() if "Reached maximum retries" in line), None)
        raise EvalError(
            f"the Ray Data evaluation stopped after {written} of {len(todo)} answers "
            f"({first or type(exc).__name__}); the answers written are kept: run the same command to resume"
        ) from exc
    if buffer:
        flush(buffer)


def _plain(value: Any) -> Any:
    """Numpy scalars back to Python (NaN from missing numbers back to None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
