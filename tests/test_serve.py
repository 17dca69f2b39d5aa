"""``ray.serve.llm`` on vLLM's CPU build, on a real local Ray Serve, driven over HTTP by the real ``openai``
client.

One app serves the whole module: the tiny model, bound off loopback (0.0.0.0) so the Bearer-key ingress
guards it, with a 512-token context. The evaluator (``raystep eval``) runs against it too. Greedy answers are checked against ``transformers`` ``generate``
run in this process, so a wrong model, template or position shows up as different text.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from raystep.config import RunConfig

pytestmark = pytest.mark.slow  # one app for the module: about a minute to start on 2 cores

KEY_ENV = "RAYSTEP_TEST_SERVE_KEY"
KEY = "test-key-123"
MODEL_ID = "tiny"
CONTEXT = 512  # room for a GSM8K or MATH prompt of the evaluator's test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BUILDER_INFO: list[logging.LogRecord] = []


class KeepRecords(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_starting_the_app_prints_no_library_info_lines(server):
    """The builder dumps its deployment options at INFO; a user of ``raystep serve`` must not see them."""
    assert [r.getMessage()[:60] for r in BUILDER_INFO] == []


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    """Start the app once for the module on the session's local Ray; Serve is shut down after."""
    import ray
    from conftest import start_local_ray

    from raystep.serve.run import shutdown, start

    # The ingress reads the key from its node's environment (a Kubernetes Secret on a cluster): start this
    # module's Ray with the key in the environment its processes inherit, as a node would have it.
    ray.shutdown()
    os.environ[KEY_ENV] = KEY
    start_local_ray()
    config = RunConfig.model_validate(
        {
            "model": {"path": str(tiny_model)},
            "engine": {"max_model_len": CONTEXT, "cpu_kv_cache_gib": 1},
            "serve": {
                "model": str(tiny_model),
                "model_id": MODEL_ID,
                "host": "0.0.0.0",
                "port": free_port(),
                "api_key_env": KEY_ENV,
                "weight_swap": True,
            },
        }
    )
    # what ray.serve.llm's app builder would print on the terminal at INFO (importing ray.serve sets INFO)
    builder = logging.getLogger("ray.serve.ray.llm._internal.serve.core.server.builder")
    kept = KeepRecords(level=logging.INFO)
    builder.addHandler(kept)
    try:
        url = start(config)
    finally:
        builder.removeHandler(kept)
    BUILDER_INFO.extend(kept.records)
    try:
        yield url
    finally:
        shutdown()
        os.environ.pop(KEY_ENV, None)
        ray.shutdown()  # the next module's Ray starts without the key


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    """Greedy continuations computed in this process with ``generate``: what the server must return."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # the machine's cores belong to Serve here
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

    def greedy(text: str, max_tokens: int) -> str:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
        return tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)

    greedy.tokenizer = tok  # type: ignore[attr-defined]
    return greedy


PROMPTS = [
    "Natalia sold clips to 48 of her friends in April",
    "Weng earns $12 an hour for babysitting.",
    "Betty is saving money for a new wallet which costs $100. Betty has only half",
]
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_models_lists_the_served_model_by_its_id(client: openai.OpenAI):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]


def test_greedy_completion_equals_transformers_generate(client: openai.OpenAI, reference):
    for prompt in PROMPTS:
        r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=16, temperature=0)
        assert r.choices[0].text == reference(prompt, 16), prompt
        assert r.usage.completion_tokens == 16
        assert r.choices[0].finish_reason == "length"


def test_chat_answers_on_the_models_chat_template(client: openai.OpenAI, reference):
    messages = [{"role": "user", "content": PROMPTS[0]}]
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=12, temperature=0)
    templated = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reference(templated, 12)


def test_streamed_completion_equals_the_unstreamed_one(client: openai.OpenAI):
    whole = client.completions.create(model=MODEL_ID, prompt=PROMPTS[1], max_tokens=20, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL_ID, prompt=PROMPTS[1], max_tokens=20, temperature=0, stream=True
        )
    )
    assert len(chunks) > 2  # really streamed, not one final chunk
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text


def test_seeded_sampling_repeats_and_n_gives_n_choices(client: openai.OpenAI):
    def sample(seed: int) -> list[str]:
        r = client.completions.create(
            model=MODEL_ID, prompt=PROMPTS[2], max_tokens=12, temperature=1.0, seed=seed, n=3
        )
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    first = sample(7)
    assert len(first) == 3
    assert sample(7) == first
    assert sample(8) != first


def test_32_concurrent_clients_are_all_answered(server: str):
    def one(i: int) -> str:
        c = openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=300)
        r = c.completions.create(model=MODEL_ID, prompt=f"{PROMPTS[i % 3]} {i}", max_tokens=8, temperature=0)
        return r.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert len(answers) == 32 and all(isinstance(a, str) and a for a in answers)


# --- bad input: OpenAI-style 4xx, and the server stays healthy ------------------------------------


def assert_openai_error(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"] and {"message", "type", "code"} <= set(error)


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL_ID, "prompt": "hi", "max_tokens": -5},
        {"model": MODEL_ID, "prompt": "hi", "max_tokens": 10**6},  # over the context
        {"model": MODEL_ID, "prompt": "hi", "temperature": -1.0},
        {"model": MODEL_ID, "prompt": "hi", "top_p": 1.5},
        {"model": MODEL_ID, "prompt": "hi", "n": 0},
        {"model": MODEL_ID},  # no prompt
        {"model": MODEL_ID, "prompt": "Natalia sold clips to 48 of her friends. " * 60},  # over the context
    ],
    ids=["max_tokens<0", "max_tokens>context", "temperature<0", "top_p>1", "n=0", "no-prompt", "long-prompt"],
)
def test_invalid_requests_get_an_openai_400(server: str, body: dict):
    assert_openai_error(httpx.post(f"{server}/completions", json=body, headers=AUTH, timeout=60), 400)


def test_malformed_json_and_missing_messages_are_4xx(server: str):
    headers = {**AUTH, "Content-Type": "application/json"}
    for raw in (b'{"model": "tiny", "prompt": ', b"[1, 2]"):
        resp = httpx.post(f"{server}/completions", content=raw, headers=headers, timeout=60)
        assert 400 <= resp.status_code < 500, (raw, resp.status_code, resp.text)
    resp = httpx.post(f"{server}/chat/completions", json={"model": MODEL_ID}, headers=AUTH, timeout=60)
    assert 400 <= resp.status_code < 500


def test_unknown_model_is_404(server: str):
    body = {"model": "gpt-4", "prompt": "hi", "max_tokens": 2}
    assert_openai_error(httpx.post(f"{server}/completions", json=body, headers=AUTH, timeout=60), 404)


def test_off_loopback_the_key_is_required(server: str):
    body = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 2}
    assert_openai_error(httpx.post(f"{server}/completions", json=body, timeout=60), 401)
    wrong = {"Authorization": "Bearer not-the-key"}
    assert_openai_error(httpx.post(f"{server}/completions", json=body, headers=wrong, timeout=60), 401)
    assert_openai_error(httpx.get(f"{server}/models", headers={"Authorization": "Basic x"}, timeout=60), 401)
    assert httpx.post(f"{server}/completions", json=body, headers=AUTH, timeout=60).status_code == 200


def test_still_healthy_after_the_bad_requests(client: openai.OpenAI, reference):
    r = client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert r.choices[0].text == reference(PROMPTS[0], 8)


# --- limits before work: refused in the ingress, never failing or stalling the others --------------

ROOT_PATHS = ("/openapi.json", "/docs", "/redoc")


def root_of(server: str) -> str:
    return server.removesuffix("/v1")


def refusal(resp: httpx.Response, status: int, param: str | None = None) -> str:
    """The OpenAI error of a refused request: its status, shape and the field it names; its message."""
    assert_openai_error(resp, status)
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    return error["message"]


@pytest.mark.parametrize("path", ROOT_PATHS)
def test_the_api_schema_and_docs_need_the_key(server: str, path: str):
    url = root_of(server) + path
    assert_openai_error(httpx.get(url, timeout=60), 401)
    assert_openai_error(httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=60), 401)
    assert httpx.get(url, headers=AUTH, timeout=60).status_code == 200


def test_models_show_the_model_id_and_no_filesystem_path(server: str, tiny_model: Path):
    listed = httpx.get(f"{server}/models", headers=AUTH, timeout=60)
    one = httpx.get(f"{server}/models/{MODEL_ID}", headers=AUTH, timeout=60)
    assert [m["id"] for m in listed.json()["data"]] == [MODEL_ID] and one.json()["id"] == MODEL_ID
    for text in (listed.text, one.text):
        assert str(tiny_model) not in text and tiny_model.name not in text and "/tmp" not in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**70),
        ("seed", -(2**64)),
        ("seed", "7"),
        ("max_tokens", 0),
        ("max_tokens", CONTEXT + 1),
        ("temperature", 2.5),
        ("temperature", "hot"),
        ("top_p", 0),
        ("top_p", 1.01),
        ("n", 0),
        ("n", 17),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", [1, 2]),
    ],
)
def test_every_sampling_field_is_range_checked_and_named(server: str, field: str, value):
    body = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 4, "temperature": 1.0, field: value}
    resp = httpx.post(f"{server}/completions", json=body, headers=AUTH, timeout=60)
    assert field in refusal(resp, 400, field)
    chat = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, field: value}
    resp = httpx.post(f"{server}/chat/completions", json=chat, headers=AUTH, timeout=60)
    assert field in refusal(resp, 400, field)


def test_an_out_of_range_seed_fails_alone_among_requests_batched_with_it(server: str):
    def one(seed: int) -> httpx.Response:
        body = {"model": MODEL_ID, "prompt": PROMPTS[seed % 3], "max_tokens": 8, "temperature": 1.0}
        return httpx.post(f"{server}/completions", json={**body, "seed": seed}, headers=AUTH, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        answers = list(pool.map(one, [*range(4), 2**70, *range(4, 8)]))
    assert "seed" in refusal(answers[4], 400, "seed")
    assert [r.status_code for r in answers[:4] + answers[5:]] == [200] * 8


def test_prompts_times_n_is_limited_per_request(server: str):
    body = {"model": MODEL_ID, "max_tokens": 2, "temperature": 1.0}
    resp = httpx.post(
        f"{server}/completions", json={**body, "prompt": ["hi"] * 128, "n": 16}, headers=AUTH, timeout=120
    )
    assert "2048 completions" in refusal(resp, 400, "n")
    resp = httpx.post(f"{server}/completions", json={**body, "prompt": ["hi"] * 4, "n": 5}, headers=AUTH)
    assert "serve.limits.max_choices" in refusal(resp, 400, "n")
    ok = httpx.post(
        f"{server}/completions", json={**body, "prompt": ["hi"] * 4, "n": 4}, headers=AUTH, timeout=120
    )
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 16


def test_a_prompt_over_the_length_limit_is_refused_before_the_engine(server: str):
    too_long = "x" * (32 * CONTEXT + 1)  # serve.limits.max_prompt_chars: 32 per token of the context
    body = {"model": MODEL_ID, "prompt": too_long, "max_tokens": 2}
    message = refusal(httpx.post(f"{server}/completions", json=body, headers=AUTH, timeout=60), 400, "prompt")
    assert "serve.limits.max_prompt_chars" in message
    halves = [{"role": "user", "content": too_long[: len(too_long) // 2 + 1]}] * 2  # together over it
    chat = {"model": MODEL_ID, "messages": halves, "max_tokens": 2}
    resp = httpx.post(f"{server}/chat/completions", json=chat, headers=AUTH, timeout=60)
    assert "serve.limits.max_prompt_chars" in refusal(resp, 400, "messages")


def test_deeply_nested_json_is_an_openai_400(server: str):
    headers = {**AUTH, "Content-Type": "application/json"}
    for depth in (100_000, 40):
        raw = b'{"model": "tiny", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
        resp = httpx.post(f"{server}/completions", content=raw, headers=headers, timeout=60)
        assert "nests more than 32 levels" in refusal(resp, 400), depth
    resp = httpx.post(f"{server}/completions", content=b'{"model": "tiny", "prompt": ', headers=headers)
    assert "not valid JSON" in refusal(resp, 400)


def test_a_20_mb_body_is_refused_at_once_and_others_are_served(server: str, client: openai.OpenAI):
    huge = {"model": MODEL_ID, "prompt": "Natalia sold clips to 48 of her friends. " * 500_000}
    started = time.monotonic()
    resp = httpx.post(f"{server}/completions", json=huge, headers=AUTH, timeout=120)
    assert "serve.limits.max_request_bytes" in refusal(resp, 413)
    assert time.monotonic() - started < 10
    r = client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length"


def test_16_small_requests_are_served_while_a_maximal_request_is_served(server: str, reference):
    """The biggest request the limits allow (a prompt and completions filling the context, as many
    completions as one request may ask) is kept in flight, one after another, while 16 small requests
    run side by side: all are answered while it runs. How much slower they are is a number for the
    benchmark (``benchmarks/bench_serve.py`` prints the ratio), not a timed test."""
    tok = reference.tokenizer
    prompt = tok.decode(tok(" ".join(PROMPTS * 8))["input_ids"][: CONTEXT // 2])
    room = CONTEXT - len(tok(prompt)["input_ids"]) - 1
    maximal = {
        "model": MODEL_ID, "prompt": prompt, "n": 16, "max_tokens": room, "temperature": 1.0, "ignore_eos": True,
    }  # fmt: skip

    def small(i: int) -> float:
        body = {"model": MODEL_ID, "prompt": f"{PROMPTS[i % 3]} {i}", "max_tokens": 8, "temperature": 0}
        started = time.monotonic()
        resp = httpx.post(f"{server}/completions", json=body, headers=AUTH, timeout=120)
        assert resp.status_code == 200, resp.text
        return time.monotonic() - started

    def sixteen() -> list[float]:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            return list(pool.map(small, range(16)))

    spans: list[tuple[float, float]] = []
    done = threading.Event()

    def keep_maximal_in_flight() -> None:
        while not done.is_set():
            began = time.monotonic()
            resp = httpx.post(f"{server}/completions", json=maximal, headers=AUTH, timeout=300)
            assert resp.status_code == 200, resp.text
            choices = resp.json()["choices"]
            assert len(choices) == 16 and {c["finish_reason"] for c in choices} == {"length"}
            spans.append((began, time.monotonic()))

    sixteen()  # warm
    unloaded = statistics.median(max(sixteen()) for _ in range(3))  # on a CPU shared with others
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(keep_maximal_in_flight)
        time.sleep(0.5)  # the first maximal request is past its prefill
        loaded_start = time.monotonic()
        loaded = sixteen()
        loaded_end = time.monotonic()
        done.set()
        big.result()
    print(
        f"\nunloaded: slowest of 16 small requests {unloaded:.2f} s (median of 3 rounds); beside maximal requests "
        f"({len(spans)}, {[round(b - a, 2) for a, b in spans]} s each): {[round(t, 2) for t in sorted(loaded)]} s"
    )
    assert spans[0][0] < loaded_start and spans[-1][1] > loaded_end  # a maximal request ran throughout
    assert len(loaded) == 16  # every small request answered (200) while it ran


def test_a_taken_port_is_one_line_and_exit_2(tiny_model: Path, tmp_path: Path):
    """``raystep serve`` on a port another server holds: one clear line, exit 2, nothing started."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "raystep.cli", "serve", "--model", str(tiny_model), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"raystep serve: cannot listen on 127.0.0.1:{port}: Address already in use (another server holds "
        "the port?): choose a free one with --port or serve.port"
    ]


# --- the `endpoint` engine: the data stages sampling from this served policy ------------------------


def test_endpoint_engine_samples_through_the_served_policy(server: str, ray_local, reference):
    """``sampling.engine: endpoint`` through Ray Data against this app: the row contract, greedy text equal
    to ``generate``, seeded rows that repeat, and a request the server refuses kept with its error."""
    from raystep.config import load_config
    from raystep.engines import base, build_generator, sampling_defaults
    from raystep.engines.endpoint import EndpointSampler

    cfg = load_config(
        None,
        [
            "sampling.engine=endpoint",
            f"sampling.endpoint.base_url={server}",
            f"sampling.endpoint.model={MODEL_ID}",
            f"sampling.endpoint.api_key_env={KEY_ENV}",
            "sampling.endpoint.max_retries=1",
            "sampling.max_new_tokens=10",
            "sampling.batch_size=8",
        ],
    )
    greedy = {**sampling_defaults(cfg), "temperature": 0.0}
    rows = [r for i, p in enumerate(PROMPTS) for r in base.fan_out({"id": f"g{i}", "prompt": p}, 1, greedy)]
    rows += base.fan_out({"id": "s", "prompt": PROMPTS[0]}, 2, sampling_defaults(cfg))
    bad = base.fan_out({"id": "bad", "prompt": PROMPTS[0]}, 1, {**greedy, "max_new_tokens": 10**6})
    out = build_generator(cfg)(ray_local.data.from_items([*rows, *bad])).take_all()
    by_key = {(r["id"], r["sample_index"]): r for r in out}
    assert len(out) == len(rows) + 1
    for row in out:
        base.check_output_row(row)
    for i, prompt in enumerate(PROMPTS):
        assert by_key[(f"g{i}", 0)]["generated_text"] == reference(prompt, 10)
        assert by_key[(f"g{i}", 0)]["num_generated_tokens"] == 10
    assert by_key[("s", 0)]["generated_text"] != by_key[("s", 1)]["generated_text"]
    failed = by_key[("bad", 0)]
    assert failed["finish_reason"] == "error" and "400" in failed["generation_error"]
    again = build_generator(cfg)(ray_local.data.from_items(rows)).take_all()
    assert {(r["id"], r["sample_index"]): r["generated_text"] for r in again} == {
        k: v["generated_text"] for k, v in by_key.items() if k[0] != "bad"
    }
    # the samples of one prompt go as one request with n choices (seeds s, s+1, ...): each row draws what
    # it draws sent alone, with its own token count and finish reason
    many = base.fan_out({"id": "m", "prompt": PROMPTS[1]}, 4, sampling_defaults(cfg))
    alone_cfg = cfg.model_copy(deep=True)
    alone_cfg.sampling.endpoint.max_rows_per_request = 1
    packed, alone = (
        {r["sample_index"]: (r["generated_text"], r["num_generated_tokens"], r["finish_reason"]) for r in out}
        for out in (build_generator(c)(ray_local.data.from_items(many)).take_all() for c in (cfg, alone_cfg))
    )
    assert packed == alone and len({text for text, _, _ in packed.values()}) > 1
    assert all(0 < tokens <= 10 for _, tokens, _ in packed.values())
    endpoint = cfg.sampling.endpoint
    rollouts = EndpointSampler(endpoint).sample(
        PROMPTS[:2], 3, {"temperature": 1.0, "max_new_tokens": 6, "seed": 5}
    )
    assert [len(r) for r in rollouts] == [3, 3] and len(set(rollouts[0])) > 1


def test_a_checkpoint_loaded_in_place_answers_as_that_checkpoint(
    server: str, client: openai.OpenAI, reference, tiny_model: Path, tmp_path: Path
):
    """``raystep.serve.swap``: the engine, given another checkpoint of the same model, gives the next-token
    log-probabilities ``transformers`` computes on that checkpoint (vLLM's CPU reload alone leaves the tied
    LM head on the old weights), and the first checkpoint's again after swapping back."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from raystep.serve.run import APP_NAME
    from raystep.serve.swap import check_swappable, swap_weights

    other = tmp_path / "perturbed"
    shutil.copytree(tiny_model, other)
    models = [AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32) for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in models[1].parameters():
            param.add_(2.0 * param.std() * torch.randn(param.shape, generator=gen))
    models[1].save_pretrained(other)
    tok = reference.tokenizer

    def top_logprob(model, text: str) -> float:  # the greedy next token's log-probability
        with torch.no_grad():
            logits = model(torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
        return torch.log_softmax(logits, -1).max().item()

    def served() -> list[float]:
        return [
            client.completions.create(model=MODEL_ID, prompt=p, max_tokens=1, temperature=0, logprobs=1)
            .choices[0]
            .logprobs.token_logprobs[0]
            for p in PROMPTS
        ]

    original, expected = ([top_logprob(m, p) for p in PROMPTS] for m in models)
    assert min(abs(a - b) for a, b in zip(original, expected, strict=True)) > 1e-2  # the perturbation shows
    check_swappable(tiny_model, other)
    try:
        assert swap_weights(other, APP_NAME) == [str(other)]
        assert served() == pytest.approx(expected, abs=1e-3)
    finally:
        swap_weights(tiny_model, APP_NAME)
    assert served() == pytest.approx(original, abs=1e-3)


def test_the_evaluator_runs_gsm8k_and_math500_against_the_app(server: str, shared_data: Path, tmp_path: Path):
    """``raystep eval``'s run against ``ray.serve.llm`` with the key: every answer, graded, in its folder."""
    from test_evaluate import check_folder

    from raystep.config import load_config
    from raystep.evaluate.run import run as run_eval

    config = load_config(
        None,
        [
            f"storage.root={tmp_path / 'runs'}",
            "name=e2e",
            f"eval.base_url={server}",
            f"eval.model={MODEL_ID}",
            f"eval.api_key_env={KEY_ENV}",
            "eval.benchmarks=[gsm8k, math500]",
            "eval.limit=3",
            "eval.max_tokens=16",
            "eval.concurrency=4",
            f"eval.data_dir={shared_data}",
        ],
    )
    result = run_eval(config)
    out = tmp_path / "runs" / "e2e" / "eval" / MODEL_ID
    assert result["out_dir"] == str(out)
    for bench in ("gsm8k", "math500"):
        summary, rows = check_folder(out / bench, 3)
        assert summary["counts"]["request_errors"] == 0, rows[0]["error"]
        assert all(isinstance(r["response"], str) and r["completion_tokens"] for r in rows)
        assert all(r["grade_status"] in ("ok", "unparsable", "timeout", "error") for r in rows)
    manifest = json.loads((tmp_path / "runs" / "e2e" / "manifest.json").read_text())
    assert manifest["stages"][f"eval/{MODEL_ID}"]["status"] == "done"
