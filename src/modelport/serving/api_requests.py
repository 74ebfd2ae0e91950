"""What every registry API route does with its request: act as the caller, read a JSON
body, name the version in the path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request

from modelport.errors import Forbidden, InvalidInput
from modelport.security.principal import acting_as, of_request
from modelport.serving.http import read_body
from modelport.types import ModelRef

__all__ = [
    "BODY_LIMIT",
    "call_as_caller",
    "field",
    "flag",
    "json_body",
    "refuse_unseen",
    "strings",
    "version_ref",
]

BODY_LIMIT = 1 << 20
"""JSON bodies of the registry API (tags, metrics, a push's options) are small."""

T = TypeVar("T")


async def call_as_caller(request: Request, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread, acting as the request's principal."""
    with acting_as(of_request(request.scope)):
        # to_thread copies the context, principal included, into the thread
        return await asyncio.to_thread(function, *args)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body (an empty body is ``{}``)."""
    body = await read_body(request, BODY_LIMIT)
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    return document


def version_ref(request: Request) -> ModelRef:
    """The version a ``/models/{name}/versions/{ref}`` path names (a number or an alias)."""
    return ModelRef.parse(f"{request.path_params['name']}@{request.path_params['ref']}")


def refuse_unseen(request: Request, name: str) -> None:
    """``Forbidden`` unless the caller's grant covers model ``name`` (the same message
    whether or not it exists)."""
    if not of_request(request.scope).may_see(name):
        raise Forbidden(f"this key may not use model {name!r}")


def flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput(f"query parameter {name} must be true or false, not {value!r}")
    return value in ("true", "1")


def field(body: dict[str, Any], key: str, kind: type, *, required: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidInput(f"request body needs {key!r}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"{key!r} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def strings(body: dict[str, Any], key: str) -> list[str]:
    """The body's ``key``: a list of strings (absent: empty), else ``InvalidInput``."""
    values = field(body, key, list) or []
    if not all(isinstance(v, str) for v in values):
        raise InvalidInput(f"{key!r} must be a list of strings")
    return values
