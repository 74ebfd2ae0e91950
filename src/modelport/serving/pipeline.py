"""What every request passes through before an endpoint: one list per transport, built here.

REST: ``create_app`` builds one chain, outermost first::

    ErrorBoundary -> http wrappers, in order -> InferFirst (the fast /infer) -> Starlette

A wrapper is a plain ASGI middleware factory, ``Callable[[ASGIApp], ASGIApp]``, so it sees
every request (``/infer`` included) and every response. gRPC: ``server_interceptors`` is the
``grpc.aio.ServerInterceptor`` list the server is built with; each sees every RPC.

Both lists are the config's (``[server] http_wrappers`` / ``grpc_interceptors``: import paths
``"module:name"``, so worker processes build the same ones) followed by those a caller passes
to ``serve``. With auth on, the security step (``security_gate``) goes first in both lists:
the ``AuthWrapper`` right inside ``ErrorBoundary``, the ``AuthInterceptor`` outermost. Each
list is built once at start-up: an empty one costs a request nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp

from modelport.errors import InvalidInput

if TYPE_CHECKING:
    import grpc.aio
    from sqlalchemy import Engine

    from modelport.security.gate import Gate
    from modelport.serving.config import ServeConfig

__all__ = [
    "Wrapper",
    "http_wrappers",
    "load_object",
    "security_gate",
    "server_interceptors",
    "wrap",
]

Wrapper = Callable[[ASGIApp], ASGIApp]
"""An ASGI middleware factory: given the app inside it, the app that wraps it."""


def wrap(app: ASGIApp, wrappers: Sequence[Wrapper]) -> ASGIApp:
    """``app`` inside ``wrappers``, the first outermost."""
    for wrapper in reversed(wrappers):
        app = wrapper(app)
    return app


def security_gate(config: ServeConfig, engine: Engine) -> Gate | None:
    """The security step: a ``Gate`` over the registry's keys when auth is on for
    ``config`` (``security.exposure.auth_on``), else None. Not started: ``serve`` starts
    it (loading the keys) and closes it.
    """
    from modelport.security.exposure import auth_on

    if not auth_on(config):
        return None
    from modelport.security.gate import Gate

    return Gate(engine, failures_per_minute=config.auth_failures_per_minute)


def http_wrappers(
    config: ServeConfig, extra: Sequence[Wrapper] = (), gate: Gate | None = None
) -> list[Wrapper]:
    """The REST wrappers: auth when there is a ``gate``, the config's (``http_wrappers``),
    then ``extra``.

    Raises:
        InvalidInput: a configured path that cannot be imported or is not callable.
    """
    named = [load_object(path, "server.http_wrappers") for path in config.http_wrappers]
    if gate is None:
        return [*named, *extra]
    from modelport.security.asgi import AuthWrapper

    def auth(app: ASGIApp) -> ASGIApp:
        return AuthWrapper(app, gate)

    return [auth, *named, *extra]


def server_interceptors(
    config: ServeConfig,
    extra: Sequence[grpc.aio.ServerInterceptor] = (),
    gate: Gate | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """The gRPC interceptors: auth when there is a ``gate``, one from each of the config's
    ``grpc_interceptors`` (each names a zero-argument callable, a class say, that makes
    one), then ``extra``.

    Raises:
        InvalidInput: a configured path that cannot be imported or does not make one.
    """
    made: list[grpc.aio.ServerInterceptor] = []
    if gate is not None:
        from modelport.security.grpc import AuthInterceptor

        made.append(AuthInterceptor(gate))
    for path in config.grpc_interceptors:
        factory = load_object(path, "server.grpc_interceptors")
        try:
            made.append(factory())
        except Exception as exc:
            raise InvalidInput(
                f"server.grpc_interceptors: {path} failed to make an interceptor: {exc}"
            ) from exc
    return [*made, *extra]


def load_object(path: str, setting: str) -> Callable[..., Any]:
    """The callable an import path ``"package.module:name"`` names.

    Raises:
        InvalidInput: naming ``setting``, when the module or the name is missing or the
            object is not callable.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise InvalidInput(f"{setting}: {path!r} is not an import path; write 'module:name'")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(
            f"{setting}: cannot import {module_name!r} ({exc}); is it installed, or on PYTHONPATH?"
        ) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise InvalidInput(f"{setting}: {module_name!r} has no {attribute!r}") from None
    if not callable(found):
        raise InvalidInput(f"{setting}: {path} is not callable")
    return found  # type: ignore[no-any-return]
