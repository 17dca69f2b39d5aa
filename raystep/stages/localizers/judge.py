"""An LLM judge over the OpenAI chat API, as in the Step-DPO paper (which used GPT-4).

The judge sees the problem and the solution's steps (with the paper's prompt, the full reference
solution too: ``judge_prompts``), marks each step correct, neutral or incorrect and stops at the first
incorrect one; neutral counts as an error. With ``structured`` on, the request carries a JSON schema
(``response_format``) so the verdict comes back as a label list plus the first wrong step; replies are
read by ``verdicts.read_verdict`` (schema JSON, the paper's ``Final Decision`` line, free text), and every
reply no reader understands is counted (``unparsed_replies``) before it is retried.

Calls are the expensive, flaky part of localization, hence: a thread pool bounded by
``max_concurrency``, a requests-per-second pacer, retries (``raystep.retry``: exponential backoff, a
server's Retry-After first) on 429, 5xx, time-outs, connection errors and unreadable replies (the SDK's
retries are off so every attempt is counted), and an on-disk cache keyed by a hash of the full request, so a rerun makes no request at all.
A row whose attempts all fail keeps its error; it is never dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from raystep.config import JudgeConfig
from raystep.fs import StoragePath, atomic_text, location
from raystep.retry import api_key, describe, http_retryable, retrying
from raystep.stages.localizers.base import labelled
from raystep.stages.localizers.judge_prompts import (
    MissingReference,
    build_messages,
    format_steps,
    require_reference,
)
from raystep.stages.localizers.verdicts import (
    LABELS,
    Verdict,
    VerdictParseError,
    parse_verdicts,
    read_verdict,
    response_format,
)

__all__ = [
    "LABELS",
    "JudgeCache",
    "JudgeLocalizer",
    "MissingReference",
    "VerdictParseError",
    "api_key_for",
    "build_messages",
    "format_steps",
    "parse_verdicts",
    "require_reference",
]

REFUSED_STATUS = frozenset({400, 422})
"""What a server answers to a ``response_format`` it does not support (``structured: auto`` falls back)."""
SCHEMA_WORDS = ("response_format", "json_schema", "schema", "guided", "structured")


class MalformedReply(ValueError):
    """A response body that is not a chat completion (no JSON, no choices, no content)."""


class StructuredRefused(Exception):
    """``structured: auto`` and the server refused the schema request: ask again in free text."""


# --- transport: pacing, cache, retries -------------------------------------------------------------


class RatePacer:
    """Spaces request starts at least ``1/rps`` apart across threads (no bursts)."""

    def __init__(self, requests_per_second: float):
        self.interval = 1.0 / requests_per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class JudgeCache:
    """One JSON file per request hash: atomic writes, shareable by actors on a shared run folder."""

    def __init__(self, root: str | os.PathLike[str] | StoragePath):
        self.root = location(root)  # a local folder, or a prefix on object storage (``raystep.fs``)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> StoragePath:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_text(path) as fh:
            fh.write(json.dumps(value, ensure_ascii=False))


def api_key_for(base_url: str, env_name: str) -> str:
    """The judge's key (``raystep.retry.api_key``): a remote judge without one fails before any request."""
    return api_key(env_name, base_url, "the judge")


def _retryable(exc: BaseException) -> bool:
    """HTTP failures worth another attempt, and replies no reader understood (asked again)."""
    if isinstance(exc, (MalformedReply, VerdictParseError, openai.APIResponseValidationError)):
        return True
    return http_retryable(exc)


def _refuses_schema(exc: BaseException) -> bool:
    """A 400/422 about the schema request (not, say, a prompt too long): the server lacks structured
    outputs, so ``auto`` asks in free text instead."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in REFUSED_STATUS:
        return False
    text = f"{exc} {getattr(exc, 'body', '')}".lower()
    return any(word in text for word in SCHEMA_WORDS)


class JudgeLocalizer:
    """The paper's judge behind bounded concurrency, pacing, retries and a request cache."""

    def __init__(
        self,
        config: JudgeConfig,
        cache_dir: str | os.PathLike[str] | None = None,
        requests_per_second: float | None = None,
        client: openai.OpenAI | None = None,
        name: str = "judge",
    ):
        self.config = config
        self.name = name
        self.client = client or openai.OpenAI(
            base_url=config.base_url,
            api_key=api_key_for(config.base_url, config.api_key_env),
            max_retries=0,
            timeout=config.timeout_s,
        )
        self.cache = JudgeCache(cache_dir) if (config.cache and cache_dir is not None) else None
        self.pacer = RatePacer(requests_per_second or config.requests_per_second)
        self.stats: dict[str, int] = {
            "requests": 0,
            "cache_hits": 0,
            "retries": 0,
            "failed_rows": 0,
            "unparsed_replies": 0,
            "structured_refused": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        self._structured = config.structured != "off"
        self._lock = threading.Lock()

    def _count(self, **delta: int) -> None:
        with self._lock:
            for k, v in delta.items():
                self.stats[k] += v

    @property
    def structured(self) -> bool:
        """Whether requests carry the verdict schema now (``auto`` turns it off once a server refuses it)."""
        return self._structured

    def request_body(self, row: dict[str, Any], structured: bool | None = None) -> dict[str, Any]:
        structured = self._structured if structured is None else structured
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": build_messages(row, self.config.prompt, structured, self.config.analysis),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if structured:
            body["response_format"] = response_format(len(list(row["steps"])), self.config.analysis)
        return body

    def _call(self, body: dict[str, Any]) -> tuple[str, dict[str, int]]:
        self.pacer.wait()
        self._count(requests=1)
        raw = self.client.chat.completions.with_raw_response.create(**body)
        try:
            data = json.loads(raw.http_response.text)
            content = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise MalformedReply(f"not a chat completion: {raw.http_response.text[:120]!r}") from exc
        if not isinstance(content, str):
            raise MalformedReply("the reply has no text content")
        usage = data.get("usage") or {}
        tokens = {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        }
        self._count(**tokens)
        return content, tokens

    def judge_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row: cache, else up to ``1 + max_retries`` attempts; never raises."""
        try:
            if not list(row["steps"]):
                return labelled(row, self.name, 0, {"model": self.config.model}, "no steps to judge")
            while True:
                structured = self._structured
                try:
                    return self._judge_row(row, structured)
                except StructuredRefused:
                    with self._lock:
                        self._structured = False  # the server does not take the schema: free text from now
        except MissingReference as exc:  # no request can help: the row keeps the reason
            self._count(failed_rows=1)
            return labelled(row, self.name, 0, {"model": self.config.model}, f"judge failed: {exc}")
        except Exception as exc:  # a malformed row must not take its batch down
            self._count(failed_rows=1)
            return labelled(row, self.name, 0, {"model": self.config.model}, f"judge failed: {describe(exc)}")

    def _evidence(self, key: str, structured: bool) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "prompt": self.config.prompt,
            "mode": "json_schema" if structured else "text",
            "request": key[:16],
            "cached": False,
        }

    def _from_cache(self, key: str, num_steps: int, structured: bool) -> tuple[str, Verdict] | None:
        cached = self.cache.get(key) if self.cache else None
        if cached is None:
            return None
        try:
            return str(cached["reply"]), read_verdict(str(cached["reply"]), num_steps, structured)
        except (KeyError, VerdictParseError):
            return None  # an entry no reader understands: ask again and overwrite it

    def _judge_row(self, row: dict[str, Any], structured: bool) -> dict[str, Any]:
        steps = list(row["steps"])
        body = self.request_body(row, structured)
        key = JudgeCache.key(body)
        evidence = self._evidence(key, structured)
        hit = self._from_cache(key, len(steps), structured)
        if hit is not None:
            self._count(cache_hits=1)
            reply, verdict = hit
            evidence.update(
                _verdict_evidence(verdict), cached=True, reply=reply, attempts=0, parse_failures=0
            )
            evidence["usage"] = {"prompt_tokens": 0, "completion_tokens": 0}
            return labelled(row, self.name, verdict.first_wrong, evidence)
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        errors: list[str] = []
        unparsed = 0
        try:
            for attempt in retrying(
                self.config.max_retries, self.config.backoff_s, _retryable, lambda _: self._count(retries=1)
            ):
                with attempt:
                    try:
                        reply, tokens = self._call(body)
                        for k, v in tokens.items():
                            usage[k] += v
                        try:
                            verdict = read_verdict(reply, len(steps), structured)
                        except VerdictParseError:
                            unparsed += 1
                            self._count(unparsed_replies=1)
                            raise
                    except Exception as exc:
                        if structured and self.config.structured == "auto" and _refuses_schema(exc):
                            self._count(structured_refused=1)
                            raise StructuredRefused(describe(exc)) from exc
                        errors.append(describe(exc))
                        raise
        except StructuredRefused:
            raise
        except Exception:  # retries spent, or a final error: the row keeps it and a rerun asks again
            self._count(failed_rows=1)
            evidence.update(attempts=len(errors), usage=usage, errors=errors, parse_failures=unparsed)
            return labelled(
                row, self.name, 0, evidence, f"judge failed after {len(errors)} attempt(s): {errors[-1]}"
            )
        if self.cache:
            self.cache.put(key, {"reply": reply, "usage": tokens, "model": self.config.model})
        evidence.update(
            _verdict_evidence(verdict),
            reply=reply,
            attempts=len(errors) + 1,
            usage=usage,
            parse_failures=unparsed,
        )
        if errors:
            evidence["retried_errors"] = errors
        return labelled(row, self.name, verdict.first_wrong, evidence)

    def locate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(rows))) as pool:
            return list(pool.map(self.judge_row, rows))


def _verdict_evidence(verdict: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {
        "labels": {str(k): v for k, v in sorted(verdict.labels.items())},
        "parsed_by": verdict.parsed_by,
    }
    if verdict.notes:
        out["notes"] = verdict.notes
    return out
