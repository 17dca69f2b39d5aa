"""The CPU OpenAI app on a real local Ray Serve, driven over HTTP by the real ``openai`` client.

One app (the tiny model, a Bearer key, a 128-token context and a 32-token cap) serves the whole
module; answers are checked against ``transformers`` ``generate`` run in this process, so a wrong
batch, mask or position shows up as different text, not just as a shape.
"""

# No ``from __future__ import annotations``: the FastAPI route class below is wrapped by Serve's
# ingress, which needs real annotation objects (see raystep/serve/app.py).

import json
import os
import socket
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI, Request

from raystep.config import RunConfig
from raystep.serve.run import shutdown, start

pytestmark = pytest.mark.slow  # one app for the module: ~15 s to start, ~30 s of requests on 2 cores

KEY_ENV = "RAYSTEP_TEST_SERVE_KEY"
KEY = "test-key-123"
MODEL_ID = "tiny"
CONTEXT = 128
CAP = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    """Start the app once for the module (Ray as the ``ray_local`` fixture starts it); Serve shut down after."""
    import ray
    from conftest import RAY_INIT_KWARGS

    if not ray.is_initialized():
        # address="local": never attach to another Ray that happens to run on this machine.
        ray.init(**{"address": "local", **RAY_INIT_KWARGS})
    os.environ[KEY_ENV] = KEY
    config = RunConfig.model_validate(
        {
            "serve": {
                "model": str(tiny_model),
                "model_id": MODEL_ID,
                "port": free_port(),
                "api_key_env": KEY_ENV,
                "max_context": CONTEXT,
                "max_tokens_cap": CAP,
                "max_batch_size": 8,
                "batch_wait_timeout_s": 0.05,
                "max_ongoing_requests": 24,
                "max_queued_requests": 100,
            }
        }
    )
    url = start(config)
    try:
        yield url
    finally:
        shutdown()
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    """Greedy continuations computed in this process with ``generate``: what the server must return."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # the machine's cores belong to Serve here
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()

    def greedy(text: str, max_tokens: int, chat: bool = False) -> tuple[str, int, int]:
        ids = tok(text, add_special_tokens=not chat)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
        new = out[0, len(ids) :].tolist()
        return tok.decode(new, skip_special_tokens=True), len(ids), len(new)

    def chat_prompt(messages: list[dict]) -> str:
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    greedy.chat_prompt = chat_prompt  # type: ignore[attr-defined]
    return greedy


PROMPTS = [
    "Natalia sold clips to 48 of her friends in April",
    "Weng earns $12 an hour for babysitting.",
    "How many",
    "Betty is saving money for a new wallet which costs $100. Betty has only half",
]


def test_health_is_open_and_models_lists_the_served_model(server: str, client: openai.OpenAI):
    assert httpx.get(server.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert models.data[0].model_extra["max_model_len"] == CONTEXT
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_backpressure_limits_reach_the_deployment(server: str):
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployment = details["applications"]["raystep"]["deployments"]["OpenAIServer"]["deployment_config"]
    assert deployment["max_ongoing_requests"] == 24
    assert deployment["max_queued_requests"] == 100
    assert details["http_options"]["host"] == "127.0.0.1"


def test_requests_over_the_limits_get_503_not_a_hang(server: str, tiny_model: Path):
    """Backpressure for real: 1 ongoing + 1 queued request allowed, 12 sent at once."""
    from ray import serve

    from raystep.serve.app import AppSettings, build_app

    settings = AppSettings(
        model_path=str(tiny_model), model_id=MODEL_ID, max_batch_size=1, max_tokens_cap=CAP
    )
    app = build_app(settings, max_ongoing_requests=1, max_queued_requests=1, num_cpus=0)
    serve.run(app, name="tight", route_prefix="/tight")
    url = server.removesuffix("/v1") + "/tight/v1/completions"
    body = {"model": MODEL_ID, "prompt": PROMPTS[0], "max_tokens": CAP, "temperature": 0}
    statuses: list[int] = []

    def call() -> None:
        statuses.append(httpx.post(url, json=body, timeout=60).status_code)

    try:
        threads = [threading.Thread(target=call) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
    finally:
        serve.delete("tight")
    assert len(statuses) == 12
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1
    assert statuses.count(503) >= 1, statuses


def test_completion_matches_generate_with_usage(client: openai.OpenAI, reference):
    expected, prompt_tokens, new_tokens = reference(PROMPTS[0], 12)
    r = client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason == ("length" if new_tokens == 12 else "stop")
    assert r.usage.prompt_tokens == prompt_tokens
    assert r.usage.completion_tokens == new_tokens
    assert r.usage.total_tokens == prompt_tokens + new_tokens


def test_chat_matches_generate_on_the_chat_template(client: openai.OpenAI, reference):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[1]}]
    expected, prompt_tokens, new_tokens = reference(reference.chat_prompt(messages), 10, chat=True)
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=10, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, new_tokens)


def test_sampling_is_seeded_per_request_and_n_gives_n_choices(client: openai.OpenAI):
    def sample(seed: int) -> list[str]:
        r = client.completions.create(
            model=MODEL_ID, prompt=PROMPTS[2], max_tokens=12, temperature=1.0, top_p=0.9, seed=seed, n=3
        )
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert 3 <= r.usage.completion_tokens <= 3 * 12
        return [c.text for c in r.choices]

    first, again, other = sample(7), sample(7), sample(8)
    assert first == again
    assert first != other
    assert len(set(first)) > 1, "the n choices of one request must be sampled independently"


def test_concurrent_requests_are_batched_without_changing_answers(client: openai.OpenAI, reference):
    expected = [reference(p, 10)[0] for p in PROMPTS]
    results: list[tuple[int, str]] = []

    def call(i: int) -> None:
        r = client.completions.create(model=MODEL_ID, prompt=PROMPTS[i], max_tokens=10, temperature=0)
        results.append((i, r.choices[0].text))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == sorted((i, expected[i]) for i in range(len(PROMPTS)) for _ in range(2))


def test_streamed_completion_equals_the_unstreamed_one(client: openai.OpenAI, reference):
    expected, prompt_tokens, new_tokens = reference(PROMPTS[3], 12)
    chunks = list(
        client.completions.create(
            model=MODEL_ID,
            prompt=PROMPTS[3],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) > 1, "a stream must arrive in pieces"
    assert "".join(c.choices[0].text for c in text_chunks) == expected
    assert text_chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt_tokens, new_tokens)


def test_several_prompts_and_streamed_choices_keep_their_index(client: openai.OpenAI, reference):
    expected = [reference(p, 8) for p in PROMPTS[:2]]
    r = client.completions.create(model=MODEL_ID, prompt=PROMPTS[:2], max_tokens=8, temperature=0)
    assert [c.text for c in r.choices] == [e[0] for e in expected]
    assert r.usage.prompt_tokens == sum(e[1] for e in expected)
    assert r.usage.completion_tokens == sum(e[2] for e in expected)

    kwargs = {
        "model": MODEL_ID,
        "prompt": PROMPTS[1],
        "max_tokens": 10,
        "temperature": 0.9,
        "seed": 11,
        "n": 2,
    }
    whole = client.completions.create(**kwargs)
    pieces = {0: "", 1: ""}
    finished = set()
    for chunk in client.completions.create(stream=True, **kwargs):
        (choice,) = chunk.choices
        pieces[choice.index] += choice.text
        if choice.finish_reason:
            finished.add(choice.index)
    assert pieces == {c.index: c.text for c in whole.choices}
    assert finished == {0, 1}


def test_streamed_chat_sends_role_then_content(client: openai.OpenAI, reference):
    messages = [{"role": "user", "content": PROMPTS[0]}]
    expected, _, _ = reference(reference.chat_prompt(messages), 10, chat=True)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID, messages=messages, max_tokens=10, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_raw_sse_ends_with_done(server: str):
    body = {"model": MODEL_ID, "prompt": "How many", "max_tokens": 4, "stream": True}
    with httpx.stream(
        "POST", f"{server}/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0].removeprefix("data: "))["object"] == "text_completion"


def test_stop_sequence_cuts_the_text(client: openai.OpenAI, reference):
    full, _, _ = reference(PROMPTS[0], 16)
    stop = full.strip().split()[1] if len(full.split()) > 1 else full[2:4]
    cut = full.index(stop)
    for stream in (False, True):
        if stream:
            chunks = list(
                client.completions.create(
                    model=MODEL_ID, prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=[stop], stream=True
                )
            )
            text = "".join(c.choices[0].text for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            r = client.completions.create(
                model=MODEL_ID, prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=stop
            )
            text, finish = r.choices[0].text, r.choices[0].finish_reason
        assert text == full[:cut]
        assert finish == "stop"


# --- bad input: OpenAI-style bodies and statuses --------------------------------------------------


def assert_error(exc: openai.APIStatusError, status: int, param: str | None, code: str | None = None) -> None:
    assert exc.status_code == status
    error = exc.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_invalid_json_is_400(server: str):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for raw in (b'{"model": "tiny", "prompt": ', b"[1, 2]", b""):
        resp = httpx.post(f"{server}/completions", content=raw, headers=headers)
        assert resp.status_code == 400, raw
        assert resp.json()["error"]["code"] == "invalid_json"
        assert resp.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert_error(err.value, 404, "model", "model_not_found")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_missing_or_wrong_key_is_401(server: str):
    resp = httpx.post(f"{server}/completions", json={"model": MODEL_ID, "prompt": "hi"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/models").status_code == 401
    wrong = openai.OpenAI(base_url=server, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    assert_error(err.value, 401, None, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_prompt_over_the_context_is_400(client: openai.OpenAI, tiny_model: Path):
    long_prompt = "Natalia sold clips to 48 of her friends in April. " * 30
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_ID, prompt=long_prompt, max_tokens=4)
    assert_error(err.value, 400, "prompt", "context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": long_prompt}])
    assert_error(err.value, 400, "messages", "context_length_exceeded")
    # fits alone, but not with the completion asked for
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    medium = "Natalia sold clips to 48 of her friends in April. " * 5
    assert CONTEXT - CAP < len(tok(medium)["input_ids"]) < CONTEXT
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_ID, prompt=medium, max_tokens=CAP)
    assert_error(err.value, 400, "max_tokens", "context_length_exceeded")


def test_max_tokens_over_the_cap_is_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=CAP + 1)
    assert_error(err.value, 400, "max_tokens", "max_tokens_exceeded")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=CAP + 1
        )
    assert_error(err.value, 400, "max_completion_tokens", "max_tokens_exceeded")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("n", 0),
        ("max_tokens", 0),
        ("presence_penalty", 3.0),
    ],
)
def test_out_of_range_sampling_values_are_400(client: openai.OpenAI, field: str, value: float):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_ID, prompt="hi", **{field: value})
    assert_error(err.value, 400, field, "invalid_value")


def test_missing_and_unsupported_fields_are_400(client: openai.OpenAI, server: str):
    resp = httpx.post(
        f"{server}/chat/completions", json={"model": MODEL_ID}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_ID, prompt="hi", logprobs=2)
    assert_error(err.value, 400, "logprobs")


# --- the Bearer guard the GPU app's ingress uses, on a plain FastAPI ingress ----------------------


class PlainIngress:
    """Stands in for ray.serve.llm's OpenAiIngress (which needs vLLM to import): same method shapes."""

    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    async def models(self) -> dict:
        return {"object": "list", "greeting": self.greeting}

    async def completions(self, body: dict, request: Request) -> dict:
        return {"echo": body, "path": request.url.path}


def test_bearer_guard_on_a_serve_ingress(server: str, monkeypatch: pytest.MonkeyPatch):
    from ray import cloudpickle, serve

    from raystep.serve.llm_ingress import with_bearer_auth

    guarded_cls = with_bearer_auth(PlainIngress, ["models", "completions"])
    monkeypatch.delenv("RAYSTEP_GUARD_KEY", raising=False)
    with pytest.raises(RuntimeError, match="RAYSTEP_GUARD_KEY"):
        guarded_cls(api_key_env="RAYSTEP_GUARD_KEY")

    # The same wiring as ray.serve.llm's make_fastapi_ingress: route decorators over the class's methods.
    app = FastAPI()
    routes = {"models": app.get("/v1/models"), "completions": app.post("/v1/completions")}
    routed = type(
        "PlainIngress", (guarded_cls,), {n: deco(getattr(guarded_cls, n)) for n, deco in routes.items()}
    )
    deployment = serve.deployment(
        serve.ingress(app)(routed),
        name="guarded",
        # On a cluster the key is in the node's environment (a Kubernetes Secret); here, the replica's.
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {KEY_ENV: KEY}}},
    )
    # This test module is not importable on a replica: ship PlainIngress by value.
    module = sys.modules[PlainIngress.__module__]
    cloudpickle.register_pickle_by_value(module)
    try:
        serve.run(
            deployment.bind(greeting="hi", api_key_env=KEY_ENV), name="guarded", route_prefix="/guarded"
        )
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    root = server.removesuffix("/v1") + "/guarded/v1"
    try:
        denied = httpx.get(f"{root}/models")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{root}/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = httpx.get(f"{root}/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["greeting"] == "hi"
        echo = httpx.post(f"{root}/completions", json={"a": 1}, headers={"Authorization": f"Bearer {KEY}"})
        assert echo.status_code == 200 and echo.json()["echo"] == {"a": 1}
        assert httpx.post(f"{root}/completions", json={"a": 1}).status_code == 401
    finally:
        serve.delete("guarded")
