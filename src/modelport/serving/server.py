"""Running a server: REST (uvicorn) and gRPC on one event loop, graceful on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from modelport.errors import InvalidInput, Unavailable
from modelport.registry import Registry
from modelport.serving.app import create_app
from modelport.serving.config import ServeConfig
from modelport.serving.manager import ModelManager
from modelport.serving.metrics import ServingMetrics

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def build_manager(
    registry: Registry, config: ServeConfig, refs: Sequence[str], aliased: str | None
) -> ModelManager:
    """A manager with every model the command line, the config file and ``--aliased`` name."""
    manager = ModelManager(registry, config, ServingMetrics())
    for ref in refs:
        await manager.register(ref)
    for name, entry in config.models.items():
        if name in manager.models:
            continue
        await manager.register(entry.ref, config.model_settings(name), entry.traffic)
    if aliased is not None:
        summaries = await asyncio.to_thread(registry.list_models)
        for summary in summaries:
            if aliased in summary.aliases and summary.name not in manager.models:
                await manager.register(f"{summary.name}@{aliased}")
    if not manager.models:
        raise InvalidInput(
            "nothing to serve: name models (modelport serve iris@production), use --config, "
            "or --aliased ALIAS for every model that has that alias"
        )
    return manager


async def serve(
    registry: Registry,
    config: ServeConfig,
    refs: Sequence[str] = (),
    aliased: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM: stop accepting, finish in-flight requests, then exit."""
    import uvicorn

    manager = await build_manager(registry, config, refs, aliased)
    # Bind both ports before anything starts, so a busy port is one clear error, not a
    # half-started server.
    http_socket = _bind(config.host, config.http_port)
    grpc_server = None
    if config.grpc_port is not None:
        from modelport.serving.v2_grpc import start_grpc_server

        try:
            grpc_server = await start_grpc_server(manager, config)
        except BaseException:
            http_socket.close()
            raise

    async def stop_grpc() -> None:
        if grpc_server is not None:
            await grpc_server.stop(config.drain_seconds)

    watcher: asyncio.Task[None] | None = None

    async def start_watch() -> None:
        nonlocal watcher
        if config.watch_interval:
            watcher = asyncio.create_task(_watch(manager, config.watch_interval))

    async def stop_watch() -> None:
        if watcher is not None:
            watcher.cancel()

    app = create_app(manager, on_start=[start_watch], on_stop=[stop_watch, stop_grpc])
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.http_port,
        loop="none",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(config.drain_seconds) or None,
        lifespan="on",
    )
    server = uvicorn.Server(server_config)
    announce = asyncio.get_running_loop().create_task(_announce(server, manager, config))
    try:
        with _exit_zero_on_sigterm(server):
            await server.serve(sockets=[http_socket])
    finally:
        announce.cancel()
        http_socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(
            f"cannot listen for REST on {host}:{port}: {exc.strerror}; choose another port "
            "with --http-port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _exit_zero_on_sigterm(server: Any) -> Iterator[None]:
    """A drained server exits 0 on SIGTERM.

    uvicorn re-raises SIGTERM after its graceful shutdown, to the handler that was there
    before it; with the default one the process would end "killed by SIGTERM" (143).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _announce(server: object, manager: ModelManager, config: ServeConfig) -> None:
    while not getattr(server, "started", False):
        await asyncio.sleep(0.01)
    served = ", ".join(str(s.ref) for s in manager.models.values())
    grpc = f", gRPC on {config.host}:{config.grpc_port}" if config.grpc_port is not None else ""
    print(f"serving {served}: REST on http://{config.host}:{config.http_port}{grpc}", flush=True)


async def _watch(manager: ModelManager, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await manager.refresh()
        except Exception:
            log.exception("following moved aliases failed; will try again")


def run(registry: Registry, config: ServeConfig, refs: Sequence[str], aliased: str | None) -> None:
    """Blocking entry point for the CLI: uvloop when available."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(registry, config, refs, aliased))
