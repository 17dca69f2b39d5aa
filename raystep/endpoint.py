"""One request to an OpenAI-compatible endpoint, with bounded concurrency and retries.

Shared by evaluation and by the ``endpoint`` generation engine (sampling from a served policy). Every
call returns a result dict, never raises for a request that failed: when retries run out the error
text is kept in the row (``error``), so nothing is lost silently and a rerun can try it again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai

from raystep.retry import retrying

VLLM_FIELDS: tuple[str, ...] = ("return_token_ids",)
"""Request fields of vLLM's OpenAI server beyond OpenAI's own (the SDK sends them as ``extra_body``)."""


def request_payload(item: dict[str, Any], model: str, api: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of one request, shared by the async client and the Ray Data path.

    ``sampling["return_token_ids"]`` asks a vLLM server for each choice's token ids, the only way to
    count each choice's tokens when one request holds several (``usage`` sums them)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": int(sampling["max_tokens"]),
        "temperature": float(sampling["temperature"]),
        "top_p": float(sampling["top_p"]),
    }
    if sampling.get("seed") is not None:
        body["seed"] = int(sampling["seed"])
    if sampling.get("stop"):
        body["stop"] = list(sampling["stop"])
    if int(sampling.get("n") or 1) > 1:
        body["n"] = int(sampling["n"])
    if sampling.get("return_token_ids"):
        body["return_token_ids"] = True
    if api == "chat":
        body["messages"] = item["messages"]
    else:
        body["prompt"] = item["prompt"]
    return body


def parse_response(api: str, data: dict[str, Any]) -> dict[str, Any]:
    """Text, token counts and finish reason from a response body (dict form of either API); with several
    choices (``n``), ``choices`` holds every text in index order, ``finish_reasons`` theirs and
    ``choice_tokens`` each one's token count (None unless the server returned ``token_ids``)."""
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index") or 0)
    if not choices:
        raise ValueError(f"response has no choices: {str(data)[:200]}")
    texts = [(c.get("message") or {}).get("content") if api == "chat" else c.get("text") for c in choices]
    if any(t is None for t in texts):
        raise ValueError(f"response choice has no text: {str(choices[0])[:200]}")
    usage = data.get("usage") or {}
    out = {
        "response": texts[0],
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "finish_reason": choices[0].get("finish_reason") or "",
    }
    if len(texts) > 1:
        out["choices"] = texts
        out["finish_reasons"] = [c.get("finish_reason") or "" for c in choices]
        out["choice_tokens"] = [
            len(c["token_ids"]) if c.get("token_ids") is not None else None for c in choices
        ]
    return out


def failed_result(error: str) -> dict[str, Any]:
    """The result columns of a request that got no usable answer: no response, ``finish_reason`` "error"."""
    return {
        "response": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "finish_reason": "error",
        "error": error,
    }


class EndpointClient:
    """``openai.AsyncOpenAI`` behind a semaphore, retried by ``raystep.retry``.

    The SDK's retries are turned off so the attempts are counted in each row and the backoff follows
    ``max_retries`` from the config exactly (a server's ``Retry-After`` wins).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api: str = "completions",
        api_key: str = "EMPTY",
        concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 600.0,
        backoff_s: float = 0.5,
    ) -> None:
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        self.model = model
        self.api = api
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._semaphore = asyncio.Semaphore(concurrency)
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s
        )

    async def _call(self, body: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in body.items() if k not in VLLM_FIELDS}
        extra = {k: body[k] for k in VLLM_FIELDS if k in body} or None
        if self.api == "chat":
            resp = await self._client.chat.completions.create(**fields, extra_body=extra)
        else:
            resp = await self._client.completions.create(**fields, extra_body=extra)
        return parse_response(self.api, resp.model_dump())

    async def complete(self, item: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
        """Send one item; the result carries the response or the last error, plus attempts and latency."""
        body = request_payload(item, self.model, self.api, sampling)
        async with self._semaphore:
            start = time.perf_counter()
            tries = 0
            try:
                async for attempt in retrying(self.max_retries, self.backoff_s, asynchronous=True):
                    tries += 1
                    with attempt:
                        out = await self._call(body)
            except Exception as exc:  # kept in the row: a failed request is never lost
                return {
                    **failed_result(f"{type(exc).__name__}: {exc}"[:2000]),
                    "attempts": tries,
                    "latency_s": round(time.perf_counter() - start, 4),
                }
            out.update(
                attempts=tries,
                latency_s=round(time.perf_counter() - start, 4),
                error=None,
            )
            return out

    async def close(self) -> None:
        await self._client.close()
