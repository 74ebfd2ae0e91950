"""A REST wrapper and a gRPC interceptor that a test server loads by import path, to prove a
client sends its API key: every request but health checks must carry ``authorization:
Bearer <TLS_PROBE_KEY>`` (the environment variable), else ``Unauthorized``.

Not modelport's authentication (``security``): only what a test needs to see the header.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.errors import Unauthorized

_OPEN_PATHS = ("/v2/health/",)
_OPEN_RPCS = ("/inference.GRPCInferenceService/ServerLive",)


def _expected() -> str:
    return f"Bearer {os.environ['TLS_PROBE_KEY']}"


def require_key(app: ASGIApp) -> ASGIApp:
    expected = _expected().encode()

    async def checked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(_OPEN_PATHS):
            given = dict(scope["headers"]).get(b"authorization")
            if given != expected:
                raise Unauthorized("probe: send the test's key as 'Authorization: Bearer ...'")
        await app(scope, receive, send)

    return checked


class RequireKey(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.expected = _expected()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        metadata = dict(details.invocation_metadata or ())
        if details.method in _OPEN_RPCS or metadata.get("authorization") == self.expected:
            return await continuation(details)
        return grpc.unary_unary_rpc_method_handler(_deny)


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> None:
    context.set_trailing_metadata((("modelport-error", Unauthorized.code),))
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "probe: send the test's key")
