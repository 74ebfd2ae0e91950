"""``modelport.serve``: the server ``modelport serve`` starts, from Python."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from modelport.errors import InvalidInput

if TYPE_CHECKING:
    import grpc

    from modelport.registry import Registry
    from modelport.serving.config import ServeConfig
    from modelport.serving.pipeline import Wrapper

__all__ = ["serve"]


def serve(
    *refs: str,
    registry: Registry | None = None,
    config: ServeConfig | None = None,
    aliased: str | None = None,
    wrappers: Sequence[Wrapper] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    **options: Any,
) -> None:
    """Serve ``refs`` (``"iris"``, ``"iris@2"``, ``"iris@production"``) until SIGTERM or
    SIGINT, as ``modelport serve`` does; blocking.

    ``options`` are the server settings of ``ServeConfig`` (``host``, ``http_port``,
    ``grpc_port`` (``None``: no gRPC), ``workers``, ``max_request_bytes``, ...), applied over
    ``config``. ``registry`` defaults to the one the environment describes (``MODELPORT_HOME``,
    ``MODELPORT_DB_URL``, ``MODELPORT_STORE_URL``); one given here stays open afterwards.
    ``wrappers`` (ASGI middleware factories) and ``interceptors`` (gRPC server
    interceptors) see every request after the config's own; they need a single process.

    Raises:
        InvalidInput: an unknown or invalid option, nothing to serve, or wrappers given for
            several worker processes.
        NotFound: a model, version or alias that does not exist.
        Unavailable: a port in use.
    """
    from modelport.config import load_settings
    from modelport.registry import Registry
    from modelport.serving.config import ServeConfig
    from modelport.serving.server import run

    base = config if config is not None else ServeConfig()
    try:
        config = ServeConfig.model_validate({**base.model_dump(), **options})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"serve option {first['loc'][0]!r}: {first['msg']}") from None
    own = registry is None
    registry = Registry(load_settings()) if registry is None else registry
    try:
        run(registry, config, list(refs), aliased, wrappers=wrappers, interceptors=interceptors)
    finally:
        if own:
            registry.close()
