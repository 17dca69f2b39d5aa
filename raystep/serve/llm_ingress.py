"""raystep's ingress for ``ray.serve.llm``: the Bearer key when one is needed, request limits, and
OpenAI-shaped errors.

``ray.serve.llm`` has no API-key option and no request limits, and some of its refusals (an unknown
model, a body FastAPI cannot parse) are ``{"detail": ...}`` bodies, which OpenAI clients do not parse.
So :func:`with_bearer_auth` builds an ingress class whose FastAPI app gets :class:`RequestGuard`, an
ASGI middleware that runs before any route (``/openapi.json`` and ``/docs`` included): it checks the
key and, for request bodies, the size, the JSON and the limits of :mod:`raystep.serve.limits`, all
before FastAPI parses the body or the engine sees it. Its endpoint methods also turn an
``HTTPException`` into ``{"error": {...}}`` with the same status. ``BearerAuthIngress`` — the class the
Serve config names in ``ingress_cls_config`` — is built from Ray LLM's ``OpenAiIngress`` when first
looked up, on a node that has vLLM. The key is read from the environment on the node; only its name
travels in the config, and the ingress keeps only its hash.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raystep.serve.limits import Refusal, RequestLimits, check_request, parse_body

_REQUEST_PARAM = "raystep_auth_request"


def key_digest(key: str) -> str:
    """What a server keeps of its API key: the hash (the key itself stays with whoever read it)."""
    return hashlib.sha256(key.encode()).hexdigest()


def auth_error(authorization: str | None, expected_digest: str) -> str | None:
    """Why ``Authorization: Bearer <key>`` is refused (None when the key matches)."""
    if not authorization:
        return "Missing API key: send 'Authorization: Bearer <key>'."
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key_digest(token.strip()), expected_digest):
        return "Incorrect API key provided."
    return None


def _guard(method: Any) -> Any:
    """Wrap one endpoint so it answers 401 before running unless the Bearer key matches."""
    signature = inspect.signature(method)
    request_name = next(
        (n for n, p in signature.parameters.items() if p.annotation is Request or n == "request"), None
    )
    params = list(signature.parameters.values())
    if request_name is None:
        params.append(inspect.Parameter(_REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request))

    @functools.wraps(method)
    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = kwargs[request_name] if request_name else kwargs.pop(_REQUEST_PARAM)
        if self._raystep_key_digest is not None:
            error = auth_error(request.headers.get("authorization"), self._raystep_key_digest)
            if error:
                return error_response(401, error, {"WWW-Authenticate": "Bearer"})
        try:
            return await method(self, *args, **kwargs)
        except HTTPException as exc:
            return error_response(exc.status_code, str(exc.detail), exc.headers)

    guarded.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return guarded


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, param: str | None = None
) -> JSONResponse:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


class RequestGuard:
    """ASGI middleware in front of every route: the Bearer key, then for a request with a body its
    size, its JSON and the request limits; a refusal is answered here, before FastAPI parses the body.

    A body over ``max_request_bytes`` is refused from its ``Content-Length`` or, without one, as soon as
    that many bytes have arrived; an accepted body is handed on to the app as it was received.
    """

    def __init__(self, app: ASGIApp, key_digest: str | None, limits: RequestLimits | None) -> None:
        self.app, self.key_digest, self.limits = app, key_digest, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.key_digest is not None:
            error = auth_error(headers.get("authorization"), self.key_digest)
            if error:
                await error_response(401, error, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        if self.limits is None or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(headers, receive)
            if body is None:  # the client went away
                return
            content_type = headers.get("content-type", "")
            if not content_type or "json" in content_type:
                check_request(scope["path"], parse_body(body, self.limits), self.limits)
        except Refusal as refusal:
            response = error_response(refusal.status, refusal.message, param=refusal.param)
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes | None:
        most = self.limits.max_request_bytes  # type: ignore[union-attr]
        too_big = Refusal(
            f"the request body is larger than {most} bytes (serve.limits.max_request_bytes)", status=413
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > most:
            raise too_big
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > most:
                raise too_big
            if not message.get("more_body", False):
                return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then whatever the client sends next."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def with_bearer_auth(base: type, endpoints: Iterable[str], name: str | None = None) -> type:
    """A subclass of ``base`` whose ``endpoints`` check ``Authorization: Bearer`` first and answer
    refusals in OpenAI's error shape.

    The constructor takes ``api_key_env`` (the variable's name) and ``require_key``: with a key required
    (any bind reachable from other hosts) it refuses to start when the variable is unset, so such an
    ingress is never left open by accident; otherwise a key that is set is enforced and none means open.
    It also takes ``limits`` (:meth:`RequestLimits.as_dict`, from the Serve config). Serve calls the
    class's ``__serve_build_asgi_app__`` on the replica after ``__init__``; it puts :class:`RequestGuard`
    with that key and those limits into the FastAPI app Ray LLM built.
    """

    def __init__(
        self: Any,
        *args: Any,
        api_key_env: str = "RAYSTEP_API_KEY",
        require_key: bool = True,
        limits: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        key = os.environ.get(api_key_env)
        if not key and require_key:
            raise RuntimeError(
                f"the environment variable {api_key_env} is empty on this node: refusing to serve on a "
                "non-loopback address without an API key"
            )
        self._raystep_key_digest = key_digest(key) if key else None
        self._raystep_limits = RequestLimits(**limits) if limits is not None else None
        base.__init__(self, *args, **kwargs)

    def build_asgi_app(self: Any) -> Any:
        """Serve's hook, called on the replica after ``__init__``: Ray LLM's FastAPI app with
        :class:`RequestGuard` as its innermost middleware (after CORS and request ids, before routing)."""
        app = self.app
        app.user_middleware.append(
            Middleware(RequestGuard, key_digest=self._raystep_key_digest, limits=self._raystep_limits)
        )
        return app

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__module__": __name__,
        "__serve_build_asgi_app__": build_asgi_app,
    }
    for endpoint in endpoints:
        namespace[endpoint] = _guard(getattr(base, endpoint))
    cls_name = name or f"BearerAuth{base.__name__}"
    namespace["__qualname__"] = cls_name
    return type(cls_name, (base,), namespace)


def __getattr__(name: str) -> Any:
    if name == "BearerAuthIngress":
        from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, OpenAiIngress

        cls = with_bearer_auth(OpenAiIngress, DEFAULT_ENDPOINTS, name=name)
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
