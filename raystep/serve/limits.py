"""What one request may ask of the served model, checked on its JSON before any engine work.

The ingress runs these checks on every request body before FastAPI parses it into vLLM's request
models, so a refusal costs a JSON parse, never tokenizing or a place in the engine's queue: one
client's huge prompt, deep JSON or 128 prompts x ``n`` cannot fail or stall the requests batched with
it. vLLM checks most sampling fields too, but after the body has crossed to the engine's replica, and
it has no limit on prompts x ``n``. The limits come from ``serve.limits`` (:func:`request_limits`)
and travel to the ingress as plain data in the Serve config.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ConfigDict, Field

from raystep.config import RunConfig, ServeLimits

CHARS_PER_TOKEN = 32
"""``serve.limits.max_prompt_chars`` when empty: this many characters per token of the context."""
FALLBACK_CONTEXT = 32768
"""The context assumed for the prompt limit when ``engine.max_model_len`` is empty (the model's own)."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP = 4
"""Stop sequences per request, as in OpenAI's API."""


class RequestLimits(ServeLimits):
    """``serve.limits`` resolved against the engine's context: what the ingress enforces."""

    model_config = ConfigDict(frozen=True)

    max_prompt_chars: int = Field(ge=1)
    """As in ``serve.limits``, always filled in (from ``engine.max_model_len`` when empty there)."""
    max_model_len: int | None = None
    """``engine.max_model_len``: the most tokens a prompt and its completion may take together."""

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def request_limits(config: RunConfig) -> RequestLimits:
    """The limits of ``config.serve.limits``, the prompt limit filled in from ``engine.max_model_len``."""
    limits = config.serve.limits
    context = config.engine.max_model_len
    chars = limits.max_prompt_chars or CHARS_PER_TOKEN * (context or FALLBACK_CONTEXT)
    return RequestLimits(**{**limits.model_dump(), "max_prompt_chars": chars, "max_model_len": context})


class Refusal(ValueError):
    """A request the server will not run: the 4xx status, the message and the field it is about."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def parse_body(raw: bytes, limits: RequestLimits) -> Any:
    """The JSON of a request body, or a :class:`Refusal` for bytes that are not JSON or nest too deep."""
    try:
        body = json.loads(raw)
    except RecursionError:  # the C parser's own guard: thousands of levels
        raise Refusal(f"the JSON body nests more than {limits.max_json_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise Refusal(f"the body is not valid JSON: {exc}") from None
    if json_depth(body, limits.max_json_depth) > limits.max_json_depth:
        raise Refusal(f"the JSON body nests more than {limits.max_json_depth} levels deep")
    return body


def json_depth(value: Any, stop_at: int) -> int:
    """How deep arrays and objects nest in ``value`` (a scalar is 0), counted without recursion and
    given up once past ``stop_at``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop_at:
                return deepest
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_request(path: str, body: Any, limits: RequestLimits) -> None:
    """Raise a :class:`Refusal` when a completions or chat request is out of range or over a limit.

    Other routes only need their body to be JSON within the size and depth limits (checked before).
    """
    chat = path.endswith("/chat/completions")
    if not (chat or path.endswith("/completions")):
        return
    if not isinstance(body, dict):
        raise Refusal("the request body must be a JSON object")
    _check_sampling(body, limits, chat)
    prompts = _check_prompts(body, limits, chat)
    n = body.get("n")
    choices = prompts * (n if isinstance(n, int) else 1)
    if choices > limits.max_choices:
        raise Refusal(
            f"this request asks for {choices} completions ({prompts} prompts x n={n or 1}); "
            f"at most {limits.max_choices} per request (serve.limits.max_choices)",
            "n",
        )


def _check_sampling(body: dict[str, Any], limits: RequestLimits, chat: bool) -> None:
    """Range checks of the sampling fields, each refusal naming its field."""
    _integer(body, "seed", INT64_MIN, INT64_MAX)
    _integer(body, "n", 1, limits.max_choices)
    most = limits.max_model_len or INT64_MAX
    for name in ("max_tokens", "max_completion_tokens") if chat else ("max_tokens",):
        _integer(body, name, 1, most)
    _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise Refusal("top_p must be greater than 0 and at most 1", "top_p")
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise Refusal("stop must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP:
        raise Refusal(f"stop holds {len(stop)} sequences; at most {MAX_STOP}", "stop")


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refusal(f"{name} must be an integer", name)
    if not low <= value <= high:
        raise Refusal(f"{name} must be between {low} and {high}; got {value}", name)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refusal(f"{name} must be a number", name)
    if not low <= value <= high:
        raise Refusal(f"{name} must be between {low:g} and {high:g}; got {value}", name)
    return float(value)


def _check_prompts(body: dict[str, Any], limits: RequestLimits, chat: bool) -> int:
    """How many prompts the request holds, each checked against the prompt length limit."""
    if chat:
        texts = list(_message_texts(body.get("messages")))
        prompts = [sum(len(t) for t in texts)]
        param = "messages"
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [len(prompt)]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
            prompts = [len(p) for p in prompt]  # a list of prompts, or of token-id lists
        else:  # one token-id list, or nothing: vLLM's own checks answer
            prompts = [0]
        param = "prompt"
    longest = max(prompts)
    if longest > limits.max_prompt_chars:
        raise Refusal(
            f"a prompt of {longest} characters is longer than this server takes "
            f"({limits.max_prompt_chars}, serve.limits.max_prompt_chars)",
            param,
        )
    return len(prompts)


def _message_texts(messages: Any) -> Any:
    """The text of chat messages: string contents and the ``text`` of content parts."""
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]
