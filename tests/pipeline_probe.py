"""Wrappers and an interceptor that a test server loads by import path (``[server]
http_wrappers`` / ``grpc_interceptors``), to prove every request passes through them.

``outer`` and ``inner`` each add an ``x-probe`` header to every response (inner first, so the
order they were applied in shows); ``inner`` also refuses ``/probe/unauthorized`` with
``Unauthorized`` and fails ``/probe/crash`` with a bug. ``Recorder`` appends each RPC's
method name to the file named by ``PIPELINE_PROBE_LOG``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.errors import Unauthorized


def _tagging(app: ASGIApp, tag: bytes) -> ASGIApp:
    async def tagged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-probe", tag)]}
            await send(message)

        await app(scope, receive, send_tagged)

    return tagged


def outer(app: ASGIApp) -> ASGIApp:
    return _tagging(app, b"outer")


def inner(app: ASGIApp) -> ASGIApp:
    tagged = _tagging(app, b"inner")

    async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path == "/probe/unauthorized":
            raise Unauthorized("probe: no key given; send one in the Authorization header")
        if path == "/probe/crash":
            raise RuntimeError("probe crash")
        await tagged(scope, receive, send)

    return refusing


class Recorder(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        with open(os.environ["PIPELINE_PROBE_LOG"], "a") as log:  # noqa: PTH123
            log.write(f"{handler_call_details.method}\n")
        return await continuation(handler_call_details)
