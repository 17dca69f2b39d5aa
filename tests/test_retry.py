"""raystep.retry: one retry policy for every HTTP client (judge, evaluation, the endpoint engine)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import tenacity

from raystep.retry import api_key, backoff, describe, http_retryable, retry_after, retrying


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError(f"status {status}", response=response, body=None)


def test_which_failures_are_retried():
    assert http_retryable(status_error(429)) and http_retryable(status_error(503))
    assert not http_retryable(status_error(400)) and not http_retryable(status_error(401))
    assert http_retryable(openai.APIConnectionError(request=httpx.Request("GET", "http://x")))
    assert not http_retryable(ValueError("not HTTP"))
    assert describe(status_error(429)).startswith("HTTP 429: ")


def test_retry_after_wins_over_backoff_and_is_capped():
    def state_after(exc: BaseException, number: int) -> tenacity.RetryCallState:
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = number
        state.set_exception((type(exc), exc, None))
        return state

    wait = backoff(0.5, cap_s=30.0)
    assert retry_after(status_error(429, {"Retry-After": "7"})) == 7.0
    assert retry_after(status_error(429, {"Retry-After": "soon"})) is None
    assert wait(state_after(status_error(429, {"Retry-After": "7"}), 1)) == 7.0
    assert wait(state_after(status_error(429, {"Retry-After": "900"}), 1)) == 30.0
    third = wait(state_after(status_error(503), 3))  # 0.5 * 2**2 plus up to 0.5 of jitter
    assert 2.0 <= third <= 2.5


def test_retrying_stops_after_max_retries_and_reraises_the_last_error():
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise status_error(429, {"Retry-After": "0.2"})
        return "ok"

    for attempt in retrying(max_retries=2, backoff_s=0.01):
        with attempt:
            result = flaky()
    assert result == "ok" and len(calls) == 3
    assert calls[1] - calls[0] >= 0.2  # the server's Retry-After, not the 0.01 s backoff

    calls.clear()
    with pytest.raises(openai.APIStatusError):
        for attempt in retrying(max_retries=1, backoff_s=0.01):
            with attempt:
                flaky()
    assert len(calls) == 2

    final: list[int] = []
    with pytest.raises(openai.APIStatusError):  # a 400 is final: no second attempt
        for attempt in retrying(max_retries=5, backoff_s=0.01):
            with attempt:
                final.append(1)
                raise status_error(400)
    assert final == [1]


def test_api_key_comes_from_the_environment_and_remote_servers_need_one(monkeypatch):
    monkeypatch.delenv("RAYSTEP_TEST_KEY", raising=False)
    assert api_key("RAYSTEP_TEST_KEY") == "EMPTY"
    assert api_key("RAYSTEP_TEST_KEY", "http://127.0.0.1:8000/v1") == "EMPTY"
    with pytest.raises(
        ValueError, match=r"https://api.example.com/v1 needs an API key: .*\$RAYSTEP_TEST_KEY"
    ):
        api_key("RAYSTEP_TEST_KEY", "https://api.example.com/v1")
    monkeypatch.setenv("RAYSTEP_TEST_KEY", "sk-test")
    assert api_key("RAYSTEP_TEST_KEY", "https://api.example.com/v1") == "sk-test"
