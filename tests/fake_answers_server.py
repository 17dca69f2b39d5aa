"""A FAKE OpenAI-compatible endpoint that returns scripted answers, for evaluation tests.

It is a real HTTP server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1, a free port) speaking the
``/v1/completions`` and ``/v1/chat/completions`` wire format, so the real ``openai`` client and Ray
Data's HTTP processor talk to it exactly as they would to vLLM. Only the model is fake: the answer
for a request is looked up by which scripted question its prompt contains. It can also delay every
answer and fail a question's first requests with an HTTP status, to test resume and retries.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeAnswersServer:
    def __init__(
        self,
        answers: dict[str, str | list[str]],
        delay_s: float = 0.0,
        fail_times: dict[str, int] | None = None,
        fail_status: int = 503,
    ) -> None:
        self.answers = dict(answers)
        self.delay_s = delay_s
        self.fail_left = dict(fail_times or {})
        self.fail_status = fail_status
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def question_of(self, text: str) -> str | None:
        return next((q for q in self.answers if q in text), None)

    def count(self, question: str) -> int:
        """Requests (including failed ones) whose prompt held ``question``."""
        with self._lock:
            return sum(1 for r in self.requests if r["question"] == question)

    def _respond(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat = path.endswith("/chat/completions")
        text = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        question = self.question_of(text)
        with self._lock:
            self.requests.append({"path": path, "question": question, "body": body})
            failing = question is not None and self.fail_left.get(question, 0) > 0
            if failing:
                self.fail_left[question] -= 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if failing:
            return self.fail_status, {"error": {"message": "scripted failure", "code": self.fail_status}}
        if question is None:
            return 400, {"error": {"message": "no scripted answer for this prompt"}}
        answer = self.answers[question]
        if isinstance(answer, list):  # one scripted answer per sampling seed
            answer = answer[int(body.get("seed") or 0) % len(answer)]
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(answer.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": answer, "finish_reason": "stop", "logprobs": None}
            obj = "text_completion"
        return 200, {
            "id": f"fake-{len(self.requests)}",
            "object": obj,
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": usage,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload = fake._respond(self.path, body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-request
                    pass

        return Handler

    def start(self) -> FakeAnswersServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnswersServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
