"""FAKE OpenAI chat-completions server for tests: a real local HTTP server, scripted replies.

It stands in for a remote judge model (GPT-4 cannot run here). It speaks the wire format the ``openai``
client expects on ``POST /v1/chat/completions`` and can inject failures per request: HTTP 429 (with
``Retry-After``), 500 / 503, a reply slower than the client's time-out, a body that is not JSON, a
completion without choices, a reply with no verdict in it, and a non-retryable 400. Faults are keyed
by a substring of the last user message and consumed in order, so a test decides exactly which row
fails how many times. Every request is logged (time, key, outcome) and the peak number of requests in
flight is tracked, so tests can check concurrency, pacing and that a rerun makes no request at all.
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
    ):
        self.responder = responder
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
                    }
                )
            if not route_ok:
                status, payload, headers = 404, b'{"error": {"message": "not found"}}', {}
            else:
                status, payload, headers = self._reply(body, fault)
            if self.latency_s:
                time.sleep(self.latency_s)
            self._send(handler, status, payload, headers)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, body: dict[str, Any], fault: str | None) -> tuple[int, bytes, dict[str, str]]:
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


def verdict_reply(first_wrong: int, num_steps: int, style: str = "lines") -> str:
    """A judge-like reply marking steps 1..first_wrong-1 correct and ``first_wrong`` incorrect (0: all correct).

    Styles imitate what real models write: ``lines`` (``Step 2: correct - ...``), ``markdown``
    (``**Step 2** - Neutral``), ``json`` (a fenced JSON list of objects), ``prose``.
    """
    last = first_wrong if first_wrong else num_steps
    labels = ["correct"] * (last - 1) + (["incorrect"] if first_wrong else ["correct"])
    if style == "lines":
        lines = [f"Step {k}: {lab} - checked." for k, lab in enumerate(labels, 1)]
        return "\n".join(lines) + ("" if first_wrong else "\nAll steps are correct.")
    if style == "markdown":
        out = []
        for k, lab in enumerate(labels, 1):
            shown = "Neutral" if lab == "incorrect" and k % 2 == 0 else lab.capitalize()
            out.append(
                f"**Step {k}** - {shown}: the reasoning here is {'fine' if lab == 'correct' else 'off'}."
            )
        return "Here is my review.\n\n" + "\n".join(out)
    if style == "json":
        items = [{"step": k, "label": lab} for k, lab in enumerate(labels, 1)]
        return "```json\n" + json.dumps(items) + "\n```"
    if style == "prose":
        if not first_wrong:
            return "I checked every step. All steps are correct, and the answer follows."
        lead = f"Steps 1 to {first_wrong - 1} look fine. " if first_wrong > 1 else ""
        return lead + f"In Step {first_wrong} the student makes an error when computing the total."
    raise ValueError(style)
