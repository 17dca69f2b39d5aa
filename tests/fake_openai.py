"""FAKE OpenAI chat-completions server for tests: a real local HTTP server, scripted replies.

It stands in for a remote judge model (GPT-4 cannot run here). It speaks the wire format the ``openai``
client expects on ``POST /v1/chat/completions`` and can inject failures per request: HTTP 429 (with
``Retry-After``), 500 / 503, a reply slower than the client's time-out, a body that is not JSON, a
completion without choices, a reply with no verdict in it, and a non-retryable 400. Faults are keyed
by a substring of the last user message and consumed in order, so a test decides exactly which row
fails how many times. Every request is logged (time, key, outcome) and the peak number of requests in
flight is tracked, so tests can check concurrency, pacing and that a rerun makes no request at all.

Structured outputs: a request with ``response_format: {"type": "json_schema", ...}`` is answered the way
a structured-output server answers it, with JSON that follows the request's schema (checked with
``jsonschema`` before it is sent), built from the verdict a scripted reply carries (:class:`Reply`):
however the free text is worded, the schema reply states the same labels. A responder that returns a
plain string is answered in that free text (a server that ignores ``response_format``), and
``structured_outputs=False`` makes the fake refuse schema requests with HTTP 400, as a model without
structured outputs does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "503", "timeout", "malformed", "nochoices", "garbage", "400")

Responder = Callable[[dict[str, Any]], str]


class Reply(str):
    """A scripted reply: the free text, plus the per-step labels it states (for schema replies)."""

    labels: list[str]

    def __new__(cls, text: str, labels: list[str]) -> Reply:
        obj = super().__new__(cls, text)
        obj.labels = list(labels)
        return obj


def schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks the reply to follow (OpenAI ``response_format``), if any."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return None
    return (fmt.get("json_schema") or {}).get("schema")


def schema_reply(reply: Reply, schema: dict[str, Any]) -> str:
    """The verdict of ``reply`` as JSON in the request's schema, validated against it: every step the
    schema names gets a label (after the first wrong step the judge's labels no longer count: incorrect)."""
    import jsonschema

    keys = list(schema["properties"]["steps"]["properties"])
    labels = reply.labels + ["incorrect"] * (len(keys) - len(reply.labels))
    first = next((k for k, lab in enumerate(labels, 1) if lab != "correct"), 0)
    full = {"analysis": str(reply), "steps": dict(zip(keys, labels, strict=False)), "first_wrong_step": first}
    obj = {k: v for k, v in full.items() if k in schema.get("properties", {})}
    jsonschema.validate(obj, schema)
    return json.dumps(obj)


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


class FakeOpenAI:
    """A threaded HTTP server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(
        self,
        responder: Responder,
        faults: dict[str, list[str]] | None = None,
        timeout_sleep_s: float = 2.0,
        latency_s: float = 0.0,
        structured_outputs: bool = True,
    ):
        self.responder = responder
        self.structured_outputs = structured_outputs
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        for kinds in self.faults.values():
            bad = [k for k in kinds if k not in FAULTS]
            if bad:
                raise ValueError(f"unknown fault kinds {bad}; known: {FAULTS}")
        self.timeout_sleep_s = timeout_sleep_s
        self.latency_s = latency_s
        self.log: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                return

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- bookkeeping ---------------------------------------------------------------------------------

    @property
    def num_requests(self) -> int:
        return len(self.log)

    def count(self, outcome: str | None = None, key: str | None = None) -> int:
        return sum(
            1
            for r in self.log
            if (outcome is None or r["outcome"] == outcome) and (key is None or key in r["text"])
        )

    def _next_fault(self, text: str) -> str | None:
        with self._lock:
            for key, kinds in self.faults.items():
                if key in text and kinds:
                    return kinds.pop(0)
        return None

    # -- the route -----------------------------------------------------------------------------------

    def _send(
        self, handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str]
    ) -> None:
        handler.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        try:
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
            pass

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            length = int(handler.headers.get("Content-Length") or 0)
            body = json.loads(handler.rfile.read(length) or b"{}")
            text = last_user_text(body)
            fault = self._next_fault(text)
            route_ok = handler.path.rstrip("/") == "/v1/chat/completions"
            with self._lock:  # logged on arrival, so a request still sleeping is already counted
                self.log.append(
                    {
                        "t": time.monotonic(),
                        "text": text,
                        "outcome": (fault or "ok") if route_ok else "404",
                        "model": body.get("model"),
                        "auth": handler.headers.get("Authorization"),
                        "schema": schema_of(body) is not None,
                    }
                )
            if not route_ok:
                status, payload, headers = 404, b'{"error": {"message": "not found"}}', {}
            else:
                status, payload, headers = self._reply(body, fault)
            if self.latency_s:
                time.sleep(self.latency_s)
        finally:
            # Out of flight before the reply is written: once the client reads it, its next request
            # may arrive before this thread runs again, which would count one request twice.
            with self._lock:
                self.in_flight -= 1
        self._send(handler, status, payload, headers)

    def _reply(self, body: dict[str, Any], fault: str | None) -> tuple[int, bytes, dict[str, str]]:
        schema = schema_of(body)
        if schema is not None and not self.structured_outputs:
            message = (
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."
            )
            payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
            return 400, payload, {}
        if fault in ("429", "500", "503", "400"):
            message = {
                "429": "rate limited",
                "500": "internal error",
                "503": "overloaded",
                "400": "bad request",
            }
            payload = json.dumps(
                {"error": {"message": message[fault], "type": "fake", "code": fault}}
            ).encode()
            headers = {"Retry-After": "0"} if fault == "429" else {}
            return int(fault), payload, headers
        if fault == "malformed":
            return 200, b'{"id": "chatcmpl-fake", "choices": [{"message": ', {}
        if fault == "nochoices":
            return 200, json.dumps({"id": "chatcmpl-fake", "object": "chat.completion"}).encode(), {}
        if fault == "timeout":
            time.sleep(self.timeout_sleep_s)
        content = "I am not sure how to grade this." if fault == "garbage" else self.responder(body)
        if schema is not None and isinstance(content, Reply):
            content = schema_reply(content, schema)
        usage = {
            "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or []),
            "completion_tokens": len(content.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
        return 200, json.dumps(completion).encode(), {}


STYLES = ("lines", "markdown", "json", "prose")
"""Free-text verdicts the text parser reads."""
DECISION_STYLES = ("final", "final-bold", "final-lines", "summary", "final-bullets", "final-lower")
"""Replies to the paper's prompt: an analysis, then its ``Final Decision`` in wordings the paper's own
parser (Step-DPO's ``prepare_for_correction.py``) reads."""
VAGUE_STYLES = ("vague", "refusal")
"""Free text naming no step label: no text parser can read it (a schema reply still states the labels)."""


def verdict_labels(first_wrong: int, num_steps: int, style: str = "lines") -> list[str]:
    """The labels a reply of ``style`` states: correct up to ``first_wrong``, which is incorrect (neutral
    in some styles), and nothing after it; every step correct when ``first_wrong`` is 0."""
    last = first_wrong if first_wrong else num_steps
    labels = ["correct"] * (last - 1) + (["incorrect"] if first_wrong else ["correct"])
    if first_wrong and first_wrong % 2 == 0 and style in ("markdown", "final-bold", "summary"):
        labels[-1] = "neutral"
    return labels


def verdict_reply(first_wrong: int, num_steps: int, style: str = "lines") -> Reply:
    """A judge-like reply marking steps 1..first_wrong-1 correct and ``first_wrong`` incorrect (0: all correct).

    Styles imitate what real models write: ``lines`` (``Step 2: correct - ...``), ``markdown``
    (``**Step 2** - Neutral``), ``json`` (a fenced JSON list of objects), ``prose``; the paper's
    ``Final Decision`` wordings (:data:`DECISION_STYLES`); and :data:`VAGUE_STYLES`, which state no label.
    The returned :class:`Reply` carries the labels, so a schema request gets the same verdict as JSON.
    """
    labels = verdict_labels(first_wrong, num_steps, style)
    return Reply(_render(labels, first_wrong, style), labels)


def _render(labels: list[str], first_wrong: int, style: str) -> str:
    if style == "lines":
        lines = [f"Step {k}: {lab} - checked." for k, lab in enumerate(labels, 1)]
        return "\n".join(lines) + ("" if first_wrong else "\nAll steps are correct.")
    if style == "markdown":
        out = [
            f"**Step {k}** - {lab.capitalize()}: the reasoning here is {'fine' if lab == 'correct' else 'off'}."
            for k, lab in enumerate(labels, 1)
        ]
        return "Here is my review.\n\n" + "\n".join(out)
    if style == "json":
        items = [{"step": k, "label": lab} for k, lab in enumerate(labels, 1)]
        return "```json\n" + json.dumps(items) + "\n```"
    if style == "prose":
        if not first_wrong:
            return "I checked every step. All steps are correct, and the answer follows."
        lead = f"Steps 1 to {first_wrong - 1} look fine. " if first_wrong > 1 else ""
        return lead + f"In Step {first_wrong} the student makes an error when computing the total."
    if style in DECISION_STYLES:
        analysis = (
            "Analysis: Step 1 restates the problem and computes the first amount; "
            + (
                f"step {first_wrong} goes wrong when it combines the amounts."
                if first_wrong
                else "the rest follows."
            )
            + "\n\n"
        )
        items = [f"Step {k}: {lab}" for k, lab in enumerate(labels, 1)]
        if style == "final":
            return analysis + "Final Decision:\n" + "; ".join(items)
        if style == "final-bold":
            return analysis + "**Final Decision:**\n" + "; ".join(items) + "."
        if style == "final-lines":
            return analysis + "Final Decision:\n" + "\n".join(items)
        if style == "summary":
            return analysis + "Summary Decision: " + "; ".join(i.replace("Step", "step") for i in items)
        if style == "final-bullets":
            return analysis + "Final decision:\n" + "\n".join(f"- {i.capitalize()}" for i in items)
        return analysis + "final decision: " + "; ".join(i.lower() for i in items)
    if style == "vague":
        return "The reasoning drifts somewhere in the middle; the final number does not follow."
    if style == "refusal":
        return "I would rather not grade this solution."
    raise ValueError(style)
