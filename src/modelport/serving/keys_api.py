"""API keys over HTTP, for admins: ``GET /api/v1/keys``, ``POST /api/v1/keys`` (the key is
in the 201 answer, once), ``DELETE /api/v1/keys/{name}``.

The auth wrapper lets only ``admin`` keys through (``security.policy``); with auth off,
whoever can reach the server is trusted, as on every other route. Each change is in the
audit log as the caller (``key.create``, ``key.revoke``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelport.errors import InvalidInput
from modelport.registry import Registry
from modelport.security.keys import KeyStore
from modelport.security.principal import acting_as, of_request
from modelport.serving.http import json_response, read_body

__all__ = ["routes"]

_BODY_LIMIT = 64 * 2**10
_FIELDS = frozenset(("name", "scope", "models", "expires", "rate"))


def routes(registry: Registry) -> list[BaseRoute]:
    """The key routes over ``registry``'s database."""
    store = KeyStore(registry.engine)

    async def list_keys(request: Request) -> Response:
        everything = request.query_params.get("all", "") in ("1", "true")
        keys = await asyncio.to_thread(store.list, include_revoked=everything)
        return json_response({"keys": [k.to_dict() for k in keys]})

    async def create_key(request: Request) -> Response:
        body = _key_request(await read_body(request, _BODY_LIMIT))
        models = body.get("models", ["*"])
        if isinstance(models, str):
            models = [p for p in models.split(",") if p]
        with acting_as(of_request(request.scope)) as who:
            record, key = await asyncio.to_thread(
                store.create,
                _text(body, "name"),
                _text(body, "scope"),
                models,
                body.get("expires"),
                body.get("rate"),
                principal=who,
            )
        return json_response({"key": key, **record.to_dict()}, 201)

    async def revoke_key(request: Request) -> Response:
        with acting_as(of_request(request.scope)) as who:
            record = await asyncio.to_thread(
                store.revoke, request.path_params["name"], principal=who
            )
        return json_response(record.to_dict())

    return [
        Route("/api/v1/keys", list_keys, methods=["GET"]),
        Route("/api/v1/keys", create_key, methods=["POST"]),
        Route("/api/v1/keys/{name}", revoke_key, methods=["DELETE"]),
    ]


def _key_request(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput('send a JSON object: {"name": "ci", "scope": "predict", ...}')
    unknown = set(document) - _FIELDS
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(sorted(unknown))}; a key has {', '.join(sorted(_FIELDS))}"
        )
    for field in ("expires", "rate"):
        if document.get(field) is not None and not isinstance(document[field], str):
            raise InvalidInput(f"{field!r} must be a string such as '30d' or '100/s'")
    models = document.get("models", ["*"])
    if not (
        isinstance(models, str)
        or (isinstance(models, list) and all(isinstance(m, str) for m in models))
    ):
        raise InvalidInput("'models' must be a list of name patterns, e.g. [\"iris*\"]")
    return document


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field!r} is required (a string)")
    return value
