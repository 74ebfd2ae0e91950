"""The ASGI app: every REST front-end's routes, /metrics, and the error handlers.

One chain (``pipeline``): ``ErrorBoundary`` -> the wrappers, in order -> ``InferFirst`` (the
fast ``/infer``) -> Starlette. Every error the HTTP edge answers is JSON ``{"error": ...,
"code": ...}``: a ``ModelportError`` with its class's ``http_status``, Starlette's own
404/405 (the ``Allow`` header kept), and anything unexpected as a 500 (code ``internal``)
whose traceback is logged once. A client that goes away mid-request is counted
(``modelport_client_disconnects_total``), not logged as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.errors import Internal, ModelportError
from modelport.serving import audit_api, keys_api, openapi, registry_api, tfserving, v2_rest
from modelport.serving.http import code_for_status, error_response, json_response
from modelport.serving.manager import ModelManager
from modelport.serving.metrics import ServingMetrics
from modelport.serving.pipeline import Wrapper, wrap

__all__ = ["ErrorBoundary", "create_app", "load_all"]

log = logging.getLogger(__name__)

StartHook = Callable[[], Awaitable[Any]]


def create_app(
    manager: ModelManager,
    *,
    wrappers: Sequence[Wrapper] = (),
    on_start: list[StartHook] | None = None,
    on_loaded: list[StartHook] | None = None,
    on_stop: list[StartHook] | None = None,
) -> ASGIApp:
    """The server's ASGI app. Models load in the background after start-up: the server is
    live at once and ready (``/v2/health/ready``) when every model is loaded and warm.
    ``on_loaded`` hooks run once that loading has finished, whether or not all succeeded.

    ``wrappers`` (ASGI middleware factories, the first outermost) see every request, ``/infer``
    included, inside the error boundary: what one raises is answered as JSON, a
    ``ModelportError`` with its status (an auth wrapper's ``Unauthorized`` is a 401)."""
    max_body = manager.config.max_request_bytes

    async def metrics(_: Request) -> Response:
        others = await manager.peers.metrics() if manager.peers is not None else []
        text = manager.metrics.exposition(others)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def modelport_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ModelportError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = _http_error_message(request, exc)
        code = code_for_status(exc.status_code)
        return json_response({"error": message, "code": code}, exc.status_code, exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette answers with this, then raises ``exc`` on to ErrorBoundary, which logs it.
        request.scope[_ANSWERED] = True
        return error_response(_INTERNAL)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for hook in on_start or []:
            await hook()
        loading = asyncio.create_task(load_all(manager, on_loaded))
        try:
            yield
        finally:
            loading.cancel()
            for hook in on_stop or []:
                await hook()
            await manager.close()

    routes = [
        *v2_rest.routes(manager, max_body),
        # TF Serving's bodies are JSON only, so they get the JSON limit.
        *tfserving.routes(manager, manager.config.json_limit()),
        Route("/metrics", metrics),
        *audit_api.routes(manager.registry),
        *registry_api.routes(manager.registry, max_upload_bytes=manager.config.max_upload_bytes),
        *openapi.routes(),
        *keys_api.routes(manager.registry),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ModelportError: modelport_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
        lifespan=lifespan,
    )
    inner = wrap(v2_rest.InferFirst(app, manager, max_body), wrappers)
    return ErrorBoundary(inner, manager.metrics)


INTERNAL_ERROR = "internal error; see the server log"
_INTERNAL = Internal(INTERNAL_ERROR)  # read only: what every unexpected failure is answered
_ANSWERED = "modelport.error_answered"  # scope key: the error's response is sent already


class ErrorBoundary:
    """The outermost layer: whatever ``app`` raised is answered here, never by the server.

    A client that went away (``ClientDisconnect``) is counted in ``client_disconnects`` and
    logged at debug level; uvicorn would log a 16-line traceback for each, which any client
    could use to fill the log. A ``ModelportError`` (raised by a wrapper: the app and
    ``InferFirst`` answer their own) is answered with its status. Any other exception is
    logged once with its traceback and answered with a JSON 500 (code ``internal``), unless
    the app's own handler answered already.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self._app = app
        self._disconnects = metrics.client_disconnects

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: start-up failures are uvicorn's to report
            await self._app(scope, receive, send)
            return
        # No wrapper around ``send`` to see whether a response started: it would cost every
        # request a coroutine per message (~0.3 us). Starlette's routes have their error
        # answered by ``internal_error``, which marks the scope; the infer endpoint sends
        # nothing before its response is complete.
        try:
            await self._app(scope, receive, send)
        except ClientDisconnect:
            protocol = _protocol(scope["path"])
            self._disconnects.labels(protocol).inc()
            log.debug("%s client went away before sending its whole request", protocol)
        except ModelportError as exc:
            with contextlib.suppress(RuntimeError):  # as below: a response was under way
                await error_response(exc)(scope, receive, send)
        except Exception:
            log.exception("%s %r failed", scope["method"], _shorten(scope["path"]))
            if not scope.get(_ANSWERED):
                # A RuntimeError here means a response was under way (uvicorn refuses a
                # second start): the client gets a cut-off response, as it would anyway.
                with contextlib.suppress(RuntimeError):
                    await error_response(_INTERNAL)(scope, receive, send)


def _protocol(path: str) -> str:
    """The protocol label for a request path (for metrics only)."""
    if path.startswith("/v2/"):
        return "rest_v2"
    if path.startswith("/v1/"):
        return "tfserving"
    return "http"


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _http_error_message(request: Request, exc: HTTPException) -> str:
    method, path = request.method, _shorten(request.url.path)
    if exc.status_code == 404:
        return f"no such endpoint: {method} {path}"
    allowed = (exc.headers or {}).get("Allow")
    if exc.status_code == 405 and allowed:
        return f"method {method} is not allowed on {path}; use {allowed}"
    return str(exc.detail)


async def load_all(manager: ModelManager, then: list[StartHook] | None = None) -> None:
    """Load every model (errors are logged: the server stays up, not ready), then ``then``."""
    try:
        await manager.load_all()
    except ModelportError as exc:
        log.error("a model failed to load: %s", exc)
    # What exists now (framework modules, loaded models) lives as long as the server: keep
    # it out of the collector's scans. Measured: p99 at c=32 on a busy machine fell from
    # 64-77 ms to ~20 ms (bench/RESULTS.md).
    gc.freeze()
    for hook in then or []:
        await hook()
