"""raystep's own OpenAI-compatible Serve application for ``transformers`` models (CPU, tests, demo).

The same routes as ``ray.serve.llm``'s app (``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``, streamed or not) so a client, the evaluator, or the demo never knows which
engine answers. Requests from many clients are gathered by ``@serve.batch`` into one decode loop
(each keeps its own sampling values); ``max_ongoing_requests`` bounds what a replica accepts.
"""

# No ``from __future__ import annotations`` here: Serve's ingress re-wraps the route methods, and FastAPI
# can then no longer resolve string annotations such as "Request" (the route would ask for a query
# parameter named ``request``). Every annotation below is valid at runtime on Python 3.10.

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.deployment import Application

from raystep.serve.decode import BatchDecoder, DecodeDelta, DecodeRequest
from raystep.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    check_bearer,
    completion_chunk,
    completion_response,
    model_not_found,
    new_id,
    parse_request,
    sse,
    usage_chunk,
)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for ``/v1/completions`` when ``max_tokens`` is absent."""


@dataclass
class AppSettings:
    """What a replica needs; plain values so the deployment's arguments stay serializable and small."""

    model_path: str
    model_id: str = "raystep"
    max_tokens_cap: int = 2048
    max_context: int | None = None
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02
    api_key_sha256: str | None = None
    """Hash of the accepted Bearer key: the key itself never leaves the process that read it."""
    dtype: str = "auto"
    trust_remote_code: bool = False
    torch_threads: int | None = None


fastapi_app = FastAPI(title="raystep", docs_url=None, redoc_url=None)


@fastapi_app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


@fastapi_app.exception_handler(Exception)
async def _server_error(_: Request, exc: Exception) -> JSONResponse:
    # Still an OpenAI-shaped body, so clients retry a 500 instead of failing to parse it.
    error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
    return JSONResponse(error.body(), status_code=500)


@dataclass
class _Prepared:
    """A validated request turned into token ids and decode requests, one per choice."""

    prompt_tokens: int
    jobs: list[DecodeRequest]


@serve.deployment(name="OpenAIServer")
@serve.ingress(fastapi_app)
class OpenAIServer:
    """One replica: a tokenizer, a model, and a batched decode loop."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = AppSettings(**settings)
        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(s.model_path, trust_remote_code=s.trust_remote_code)
        dtype = "auto" if s.dtype == "auto" else getattr(torch, s.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            s.model_path, dtype=dtype, trust_remote_code=s.trust_remote_code
        ).eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        self.decoder = BatchDecoder(self.model, self.tokenizer, [e for e in eos_ids if e is not None])
        self.context = s.max_context or int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.created = int(time.time())
        self._decode_batch.set_max_batch_size(s.max_batch_size)
        self._decode_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    # --- batching -----------------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _decode_batch(self, jobs: list[DecodeRequest]) -> AsyncIterator[list[Any]]:
        """One decode loop for every request gathered in this batch; forwards run off the event loop."""
        steps = self.decoder.run(jobs)
        done = object()
        while True:
            step = await asyncio.to_thread(next, steps, done)
            if step is done:
                return
            yield [StopIteration if delta is None else delta for delta in step]

    async def _run_choice(self, job: DecodeRequest) -> AsyncIterator[DecodeDelta]:
        # Read on past the finishing delta (one more step, which ends this stream): leaving Serve's
        # next future unread would log "Future exception was never retrieved".
        async for delta in self._decode_batch(job):
            yield delta

    # --- request handling ---------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization"), self.settings.api_key_sha256)

    def _check_model(self, model: str) -> None:
        if model != self.settings.model_id:
            raise model_not_found(model, self.settings.model_id)

    def _jobs(
        self, prompt_ids: list[int], body: Any, limit: int | None, param: str, default: int
    ) -> list[DecodeRequest]:
        """Check the prompt and token limit against the context and the cap; one job per choice."""
        cap = self.settings.max_tokens_cap
        if limit is not None and limit > cap:
            raise APIError(
                400,
                f"{param} is {limit}, over this server's cap of {cap}.",
                param=param,
                code="max_tokens_exceeded",
            )
        if len(prompt_ids) >= self.context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.context} tokens, but the prompt has "
                f"{len(prompt_ids)} tokens.",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        room = self.context - len(prompt_ids)
        if limit is None:
            limit = min(default, room, cap)
        elif len(prompt_ids) + limit > self.context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{len(prompt_ids) + limit} tokens ({len(prompt_ids)} in the prompt, {limit} in the completion).",
                param=param,
                code="context_length_exceeded",
            )
        seeds = [None] * body.n if body.seed is None else [body.seed + i for i in range(body.n)]
        return [
            DecodeRequest(
                prompt_ids=prompt_ids,
                max_tokens=limit,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=seed,
                stop=body.stop_list(),
            )
            for seed in seeds
        ]

    def _prepare_completion(self, body: CompletionRequest) -> _Prepared:
        jobs: list[DecodeRequest] = []
        prompt_tokens = 0
        for prompt in body.prompts():
            ids = self.tokenizer(prompt)["input_ids"]
            if not ids:
                raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
            prompt_tokens += len(ids)
            jobs += self._jobs(ids, body, body.max_tokens, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
        return _Prepared(prompt_tokens, jobs)

    def _prepare_chat(self, body: ChatCompletionRequest) -> _Prepared:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # a template that rejects the conversation (roles out of order, ...)
            raise APIError(400, f"The chat template rejected the messages: {exc}", param="messages") from None
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = body.token_limit()
        return _Prepared(
            len(ids), self._jobs(ids, body, limit, body.token_limit_param(), self.settings.max_tokens_cap)
        )

    async def _collect(self, jobs: list[DecodeRequest]) -> list[tuple[str, str, int]]:
        async def one(job: DecodeRequest) -> tuple[str, str, int]:
            parts, finish, tokens = [], "stop", 0
            async for delta in self._run_choice(job):
                parts.append(delta.text)
                finish, tokens = delta.finish_reason or finish, delta.completion_tokens
            return "".join(parts), finish, tokens

        try:
            return list(await asyncio.gather(*(one(j) for j in jobs)))
        finally:  # a client that went away frees its rows in the running batch
            for job in jobs:
                job.cancelled = True

    async def _merged(self, jobs: list[DecodeRequest]) -> AsyncIterator[tuple[int, DecodeDelta]]:
        """Deltas of every choice as they come, tagged with the choice index."""
        queue: asyncio.Queue[tuple[int, DecodeDelta | BaseException | None]] = asyncio.Queue()

        async def pump(index: int, job: DecodeRequest) -> None:
            try:
                async for delta in self._run_choice(job):
                    await queue.put((index, delta))
                await queue.put((index, None))
            except BaseException as exc:  # surfaced to the stream, not lost in a task
                await queue.put((index, exc))

        tasks = [asyncio.create_task(pump(i, j)) for i, j in enumerate(jobs)]
        try:
            open_ = len(jobs)
            while open_:
                index, item = await queue.get()
                if item is None:
                    open_ -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for job in jobs:
                job.cancelled = True
            for task in tasks:
                task.cancel()

    async def _stream(self, prepared: _Prepared, body: Any, chat: bool) -> AsyncIterator[str]:
        rid = new_id("chatcmpl" if chat else "cmpl")
        model = self.settings.model_id
        tokens = [0] * len(prepared.jobs)
        if chat:
            for i in range(len(prepared.jobs)):
                yield sse(chat_chunk(rid, model, i, {"role": "assistant", "content": ""}, None))
        try:
            async for index, delta in self._merged(prepared.jobs):
                tokens[index] = delta.completion_tokens
                if not delta.text and delta.finish_reason is None:
                    continue
                if chat:
                    content = {"content": delta.text} if delta.text else {}
                    yield sse(chat_chunk(rid, model, index, content, delta.finish_reason))
                else:
                    yield sse(completion_chunk(rid, model, index, delta.text, delta.finish_reason))
            if body.include_usage_in_stream():
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield sse(usage_chunk(rid, model, obj, prepared.prompt_tokens, sum(tokens)))
        except Exception as exc:  # the status line is already sent: report in-band, as OpenAI does
            yield sse(APIError(500, f"generation failed: {exc}", type="server_error").body())
        yield sse("[DONE]")

    async def _respond(self, request: Request, chat: bool) -> Any:
        self._authorize(request)
        body = parse_request(await request.body(), ChatCompletionRequest if chat else CompletionRequest)
        self._check_model(body.model)
        prepared = self._prepare_chat(body) if chat else self._prepare_completion(body)
        if body.stream:
            return StreamingResponse(self._stream(prepared, body, chat), media_type="text/event-stream")
        results = await self._collect(prepared.jobs)
        choices = [(text, finish) for text, finish, _ in results]
        completion_tokens = sum(n for _, _, n in results)
        build = chat_response if chat else completion_response
        rid = new_id("chatcmpl" if chat else "cmpl")
        return build(rid, self.settings.model_id, choices, prepared.prompt_tokens, completion_tokens)

    # --- routes -------------------------------------------------------------------------------------

    @fastapi_app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {"object": "list", "data": [self._card()]}

    @fastapi_app.get("/v1/models/{model:path}")
    async def retrieve_model(self, model: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        self._check_model(model)
        return self._card()

    @fastapi_app.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._respond(request, chat=False)

    @fastapi_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        return await self._respond(request, chat=True)

    def _card(self) -> dict[str, Any]:
        return {
            "id": self.settings.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "raystep",
            "root": self.settings.model_path,
            "max_model_len": self.context,
        }


def build_app(
    settings: AppSettings,
    *,
    num_replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    max_ongoing_requests: int = 64,
    max_queued_requests: int = -1,
    num_cpus: float = 1.0,
) -> Application:
    """The bound Serve application; autoscaling when ``min_replicas != max_replicas``."""
    options: dict[str, Any] = {
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "ray_actor_options": {"num_cpus": num_cpus},
    }
    if min_replicas is not None and max_replicas is not None and min_replicas != max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max(1, settings.max_batch_size),
        }
    else:
        options["num_replicas"] = num_replicas
    return OpenAIServer.options(**options).bind(asdict(settings))
