"""The ingress's request limits and key check as an ASGI middleware, on a real FastAPI app over httpx
(no vLLM needed); ``tests/test_serve.py`` checks the same limits on the served ``ray.serve.llm`` app."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.middleware import Middleware

from raystep.config import RunConfig
from raystep.serve.limits import Refusal, RequestLimits, check_request, json_depth, parse_body, request_limits
from raystep.serve.llm import serve_config
from raystep.serve.llm_ingress import RequestGuard, key_digest

LIMITS = RequestLimits(
    max_request_bytes=4096, max_json_depth=8, max_prompt_chars=100, max_choices=4, max_model_len=64
)
KEY = {"Authorization": "Bearer s3cret"}


def test_limits_resolve_against_the_engine_context_and_travel_in_the_serve_config():
    config = RunConfig.model_validate(
        {"engine": {"max_model_len": 512}, "serve": {"limits": {"max_choices": 8}}}
    )
    limits = request_limits(config)
    assert (limits.max_prompt_chars, limits.max_choices, limits.max_model_len) == (32 * 512, 8, 512)
    assert request_limits(RunConfig()).max_prompt_chars == 32 * 32768  # the model's own context
    explicit = RunConfig.model_validate({"serve": {"limits": {"max_prompt_chars": 1000}}})
    assert request_limits(explicit).max_prompt_chars == 1000
    kwargs = serve_config(config)["applications"][0]["args"]["ingress_cls_config"]["ingress_extra_kwargs"]
    assert kwargs["limits"] == limits.as_dict()


def test_json_depth_counts_without_recursion():
    assert json_depth(1, 8) == 0 and json_depth({"a": [1, {"b": []}]}, 8) == 4
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert json_depth(deep, 8) == 9  # gives up past the limit


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["a"] * 3, "n": 2}, "n"),
        ({"prompt": "a", "n": 5}, "n"),
        ({"prompt": "a", "n": True}, "n"),
        ({"prompt": "a" * 101}, "prompt"),
        ({"prompt": ["a", "b" * 101]}, "prompt"),
        ({"prompt": "a", "seed": 2**63}, "seed"),
        ({"prompt": "a", "max_tokens": 65}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 1.5}, "max_tokens"),
        ({"prompt": "a", "temperature": -0.1}, "temperature"),
        ({"prompt": "a", "top_p": 0.0}, "top_p"),
        ({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"prompt": "a", "stop": {"x": 1}}, "stop"),
    ],
)
def test_completions_out_of_range_or_over_a_limit_are_refused_naming_the_field(body, param):
    with pytest.raises(Refusal) as refused:
        check_request("/v1/completions", body, LIMITS)
    assert refused.value.param == param and refused.value.status == 400


def test_chat_counts_all_message_text_and_its_own_token_field():
    parts = [{"type": "text", "text": "a" * 60}, {"type": "image_url", "image_url": {"url": "x"}}]
    messages = [{"role": "system", "content": "b" * 50}, {"role": "user", "content": parts}]
    with pytest.raises(Refusal, match="110 characters"):
        check_request("/v1/chat/completions", {"messages": messages}, LIMITS)
    with pytest.raises(Refusal) as refused:
        check_request("/v1/chat/completions", {"messages": [], "max_completion_tokens": 0}, LIMITS)
    assert refused.value.param == "max_completion_tokens"


def test_requests_within_the_limits_pass():
    check_request("/v1/completions", {"prompt": ["a", "b"], "n": 2, "seed": -(2**63), "stop": ["x"]}, LIMITS)
    check_request("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 64, "top_p": 1}, LIMITS)
    check_request("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 4}, LIMITS)
    check_request("/tokenize", {"prompt": "a" * 1000}, LIMITS)  # other routes: size and depth only
    assert parse_body(b'{"a": [[1]]}', LIMITS) == {"a": [[1]]}


def guarded_app(digest: str | None) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def echo(request: Request) -> dict:
        return {"got": await request.json()}

    app.user_middleware.append(Middleware(RequestGuard, key_digest=digest, limits=LIMITS))
    return app


async def call(app: FastAPI, method: str, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.request(method, path, **kwargs)


def test_the_guard_checks_the_key_on_every_route_then_the_body():
    asyncio.run(_key_then_body())


async def _key_then_body() -> None:
    app = guarded_app(key_digest("s3cret"))
    for path in ("/openapi.json", "/docs", "/redoc"):
        resp = await call(app, "GET", path)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == 401
        assert (await call(app, "GET", path, headers=KEY)).status_code == 200
    body = {"prompt": "hi", "n": 2}
    resp = await call(app, "POST", "/v1/completions", json=body, headers=KEY)
    assert resp.status_code == 200 and resp.json() == {"got": body}  # the body read is handed on intact
    assert (await call(app, "POST", "/v1/completions", json=body)).status_code == 401


def test_the_guard_refuses_big_deep_and_broken_bodies_in_openai_shape():
    asyncio.run(_big_deep_broken())


async def _big_deep_broken() -> None:
    app = guarded_app(None)
    big = json.dumps({"prompt": "x" * 5000}).encode()
    resp = await call(app, "POST", "/v1/completions", content=big)
    assert resp.status_code == 413 and "serve.limits.max_request_bytes" in resp.json()["error"]["message"]

    async def chunks():  # no Content-Length: refused once the bytes read pass the limit
        for _ in range(100):
            yield b" " * 1000

    resp = await call(app, "POST", "/v1/completions", content=chunks())
    assert resp.status_code == 413
    deep = b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    resp = await call(
        app, "POST", "/v1/completions", content=deep, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400 and "nests more than 8 levels" in resp.json()["error"]["message"]
    resp = await call(app, "POST", "/v1/completions", content=b"{oops")
    error = resp.json()["error"]
    assert (
        resp.status_code == 400
        and error["type"] == "invalid_request_error"
        and "not valid JSON" in error["message"]
    )
    resp = await call(app, "POST", "/v1/completions", json={"prompt": "a", "n": 9})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "n"
