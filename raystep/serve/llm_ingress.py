"""Bearer-key checking for ``ray.serve.llm``'s OpenAI ingress (any non-loopback bind, or a key set).

``ray.serve.llm`` has no API-key option, and its ingress module cannot be imported without vLLM. So
:func:`with_bearer_auth` is generic (it wraps the endpoint methods of any FastAPI ingress class), and
``BearerAuthIngress`` — the class the Serve config names in ``ingress_cls_config`` — is built from
``OpenAiIngress`` when first looked up, on a node that has vLLM. The key is read from the environment
on the node; only its name travels in the config, and the ingress keeps only its hash.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import inspect
import os
from collections.abc import Iterable
from typing import Any

from fastapi import Request
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
        error = auth_error(request.headers.get("authorization"), self._raystep_key_digest)
        if error:
            body = {"error": {"message": error, "type": "invalid_request_error", "param": None, "code": 401}}
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await method(self, *args, **kwargs)

    guarded.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return guarded


def with_bearer_auth(base: type, endpoints: Iterable[str], name: str | None = None) -> type:
    """A subclass of ``base`` whose ``endpoints`` check ``Authorization: Bearer`` first.

    The constructor takes ``api_key_env`` (the variable's name) and refuses to start when it is unset:
    an ingress reachable from other hosts is never left open by accident.
    """

    def __init__(self: Any, *args: Any, api_key_env: str = "RAYSTEP_API_KEY", **kwargs: Any) -> None:
        key = os.environ.get(api_key_env)
        if not key:
            raise RuntimeError(
                f"the environment variable {api_key_env} is empty on this node: refusing to serve on a "
                "non-loopback address without an API key"
            )
        self._raystep_key_digest = key_digest(key)
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
