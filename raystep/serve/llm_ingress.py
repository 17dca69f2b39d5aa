"""raystep's ingress for ``ray.serve.llm``: the Bearer key when one is needed, and OpenAI-shaped errors.

``ray.serve.llm`` has no API-key option, and some of its refusals (an unknown model) are FastAPI
``HTTPException``s whose body is ``{"detail": ...}``, which OpenAI clients do not parse. So
:func:`with_bearer_auth` wraps the endpoint methods of an ingress class: each checks the key first
(when the app needs one) and turns an ``HTTPException`` into ``{"error": {...}}`` with the same status.
``BearerAuthIngress`` — the class the Serve config names in ``ingress_cls_config`` — is built from Ray
LLM's ``OpenAiIngress`` when first looked up, on a node that has vLLM. The key is read from the
environment on the node; only its name travels in the config, and the ingress keeps only its hash.
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


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def with_bearer_auth(base: type, endpoints: Iterable[str], name: str | None = None) -> type:
    """A subclass of ``base`` whose ``endpoints`` check ``Authorization: Bearer`` first and answer
    refusals in OpenAI's error shape.

    The constructor takes ``api_key_env`` (the variable's name) and ``require_key``: with a key required
    (any bind reachable from other hosts) it refuses to start when the variable is unset, so such an
    ingress is never left open by accident; otherwise a key that is set is enforced and none means open.
    """

    def __init__(
        self: Any, *args: Any, api_key_env: str = "RAYSTEP_API_KEY", require_key: bool = True, **kwargs: Any
    ) -> None:
        key = os.environ.get(api_key_env)
        if not key and require_key:
            raise RuntimeError(
                f"the environment variable {api_key_env} is empty on this node: refusing to serve on a "
                "non-loopback address without an API key"
            )
        self._raystep_key_digest = key_digest(key) if key else None
        base.__init__(self, *args, **kwargs)

    namespace: dict[str, Any] = {"__init__": __init__, "__module__": __name__}
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
