"""Retries of every HTTP client (the judge, evaluation, the ``endpoint`` engine), written once on
``tenacity``: which failures deserve another attempt, and how long to wait before it (a server's
``Retry-After`` wins over exponential backoff with jitter).

The callers keep their own bookkeeping (attempts and the last error go into each row, so a request that
never succeeded is kept with its error and retried by a rerun); this module only decides and waits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import openai
import tenacity

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""Timeouts, conflicts, rate limits and server errors: worth another attempt. Other 4xx are final."""
MAX_BACKOFF_S = 30.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def http_retryable(exc: BaseException) -> bool:
    """A connection failure or timeout, or an HTTP status in ``RETRYABLE_STATUS``."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS
    return False


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds from the response's ``Retry-After`` header (seconds form), if the server sent one."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def backoff(backoff_s: float, cap_s: float = MAX_BACKOFF_S) -> Callable[[tenacity.RetryCallState], float]:
    """Wait ``Retry-After`` when the server says, else ``backoff_s * 2**(n-1)`` plus up to ``backoff_s``
    of jitter; never more than ``cap_s``."""
    exponential = tenacity.wait_exponential_jitter(initial=backoff_s, max=cap_s, jitter=backoff_s)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = retry_after(exc)
        return min(after, cap_s) if after is not None else exponential(state)

    return wait


def retrying(
    max_retries: int,
    backoff_s: float,
    retryable: Callable[[BaseException], bool] = http_retryable,
    on_retry: Callable[[tenacity.RetryCallState], Any] | None = None,
    asynchronous: bool = False,
) -> tenacity.Retrying | tenacity.AsyncRetrying:
    """``1 + max_retries`` attempts; the last exception is re-raised when they run out."""
    kind = tenacity.AsyncRetrying if asynchronous else tenacity.Retrying
    return kind(
        stop=tenacity.stop_after_attempt(max_retries + 1),
        wait=backoff(backoff_s),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=on_retry,
        reraise=True,
    )


def describe(exc: BaseException) -> str:
    """One line for a row's ``error``: the HTTP status when there is one."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def api_key(env_name: str, base_url: str | None = None, server: str = "") -> str:
    """The key from the environment variable the config names (never from a file). Local servers accept a
    placeholder; a remote ``base_url`` without the variable set is an error (naming the ``server``, say
    "the judge") before any request."""
    key = os.environ.get(env_name)
    if key:
        return key
    if base_url is None or (urlparse(base_url).hostname or "") in LOOPBACK_HOSTS:
        return "EMPTY"
    where = f"{server} at {base_url}" if server else base_url
    raise ValueError(f"{where} needs an API key: set the environment variable ${env_name}")
