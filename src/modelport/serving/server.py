"""Running a server: REST (uvicorn) and gRPC on one event loop, graceful on SIGTERM.

The same code runs one worker of a multi-process server (``serve --workers N``, see
``workers``): it then binds the ports with SO_REUSEPORT and joins its peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import InvalidInput, Unavailable
from modelport.registry import Registry
from modelport.serving.app import StartHook, create_app, load_all
from modelport.serving.config import ServeConfig
from modelport.serving.connections import HttpLimits, limited_protocol
from modelport.serving.manager import ModelManager
from modelport.serving.metrics import ServingMetrics
from modelport.serving.peers import PeerGroup
from modelport.serving.pipeline import (
    Wrapper,
    http_wrappers,
    security_gate,
    server_interceptors,
)
from modelport.serving.tls import ServerTls

if TYPE_CHECKING:
    import grpc.aio

    from modelport.security.gate import Gate

__all__ = ["WorkerRole", "serve"]

log = logging.getLogger(__name__)


async def build_manager(
    registry: Registry, config: ServeConfig, refs: Sequence[str], aliased: str | None
) -> ModelManager:
    """A manager with every model the command line, the config file and ``--aliased`` name;
    none (hub mode: the registry API alone) when nothing names any."""
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
    if aliased is not None and not manager.models:
        raise InvalidInput(
            f"nothing to serve: no model has alias {aliased!r}; name models (modelport serve "
            "iris@production), or leave out --aliased to serve the registry API alone (a hub)"
        )
    # No models named at all: a hub, serving the registry API (/api/v1) alone.
    return manager


@dataclass(frozen=True)
class WorkerRole:
    """What one worker process of a multi-process server is."""

    index: int
    count: int
    run_dir: Path
    join_when_loaded: bool
    """Load and warm every model before taking requests (every worker but the first, and
    any restarted one): a worker joining a serving group must not answer "not ready"."""
    report: Callable[[str], None]
    """Tells the supervisor ``loaded``: every model has been through loading and warm-up."""


async def serve(
    registry: Registry,
    config: ServeConfig,
    refs: Sequence[str] = (),
    aliased: str | None = None,
    *,
    role: WorkerRole | None = None,
    wrappers: Sequence[Wrapper] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> None:
    """Serve until SIGINT/SIGTERM: stop accepting, finish in-flight requests, then exit.

    Every REST request passes the config's ``http_wrappers`` then ``wrappers``; every RPC the
    config's ``grpc_interceptors`` then ``interceptors`` (``pipeline``).
    """
    import uvicorn

    # Built (and their imports checked) before anything starts: a bad path is one clear error.
    tls = ServerTls.load(config)
    gate, http_chain, grpc_chain = _chains(config, registry, wrappers, interceptors)
    manager = await build_manager(registry, config, refs, aliased)
    peers = await _join_peers(manager, role) if role is not None else None
    # Bind both ports before anything starts, so a busy port is one clear error, not a
    # half-started server.
    http_socket = _bind(config.host, config.http_port, reuse_port=role is not None)
    grpc_server = None
    if config.grpc_port is not None:
        from modelport.serving.v2_grpc import start_grpc_server

        try:
            grpc_server = await start_grpc_server(manager, config, grpc_chain, tls)
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

    async def stop_peers() -> None:
        if peers is not None:
            await peers.close()

    async def report_loaded() -> None:
        if role is not None:
            role.report("loaded")

    app = create_app(
        manager,
        wrappers=http_chain,
        on_start=[start_watch],
        on_loaded=[report_loaded],
        on_stop=[stop_watch, stop_grpc, stop_peers, *_closing(gate)],
    )
    limits = HttpLimits(
        keep_alive_timeout=config.keep_alive_timeout,
        head_timeout=config.head_timeout,
        body_timeout=config.body_timeout,
        max_head_bytes=config.max_header_bytes,
        max_connections=config.max_connections,
    )
    _allow_open_files(config.max_connections)
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.http_port,
        loop="none",
        http=limited_protocol(limits, manager.metrics.http_refused),
        ws="none",  # no websocket routes: an upgrade request is plain HTTP
        timeout_keep_alive=config.keep_alive_timeout,
        access_log=False,
        # No X-Forwarded-* rewriting: nothing here uses the client's address, and the
        # middleware would cost every request a pass over its headers.
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=int(config.drain_seconds) or None,
        lifespan="on",
        ssl_context_factory=_tls_factory(tls),
    )
    server = uvicorn.Server(server_config)
    announce = None
    if role is None or (role.index == 0 and not role.join_when_loaded):
        workers = f" ({role.count} worker processes)" if role is not None else ""
        announce = asyncio.create_task(_announce(server, manager, config, tls, workers))
    try:
        with _exit_zero_on_sigterm(server):
            await server.serve(sockets=[http_socket])
    finally:
        if announce is not None:
            announce.cancel()
        http_socket.close()


def _chains(
    config: ServeConfig,
    registry: Registry,
    wrappers: Sequence[Wrapper],
    interceptors: Sequence[grpc.aio.ServerInterceptor],
) -> tuple[Gate | None, list[Wrapper], list[grpc.aio.ServerInterceptor]]:
    """The auth gate (None with auth off; started: the keys are read before either port
    takes a request), the REST wrappers and the gRPC interceptors."""
    gate = security_gate(config, registry.engine)
    if gate is not None:
        gate.start()
    http_chain = http_wrappers(config, wrappers, gate)
    grpc_chain = (
        server_interceptors(config, interceptors, gate) if config.grpc_port is not None else []
    )
    return gate, http_chain, grpc_chain


def _closing(gate: Gate | None) -> list[StartHook]:
    """The stop hook that closes ``gate`` (writing the denials still queued)."""
    if gate is None:
        return []

    async def close() -> None:
        await asyncio.to_thread(gate.close)

    return [close]


async def _join_peers(manager: ModelManager, role: WorkerRole) -> PeerGroup:
    manager.metrics.worker = str(role.index)
    peers = PeerGroup(role.index, role.count, role.run_dir, manager)
    await peers.start()
    manager.peers = peers
    peers.watch_group()
    if role.join_when_loaded:
        await peers.catch_up()
        await load_all(manager)
    return peers


def _allow_open_files(connections: int) -> None:
    """Raise this process's soft limit on open files towards ``connections`` plus room for
    models, gRPC and the registry (the hard limit allows it; many systems start at 1024)."""
    wanted = connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "at most %d files may be open (ulimit -n), too few for %d connections; "
            "raise the limit or lower max_connections",
            target,
            connections,
        )


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The REST listening socket. ``reuse_port``: worker processes each bind their own on
    one port, and the kernel spreads new connections evenly between them (one socket
    shared by all lets whichever worker wakes first take them, often all of a client's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


def _tls_factory(tls: ServerTls | None) -> Callable[..., ssl.SSLContext] | None:
    """uvicorn's hook for the REST port's TLS context: the one ``tls`` checked; None keeps
    plain HTTP exactly as it was."""
    if tls is None:
        return None
    context = tls.http_context()
    return lambda _config, _default: context


async def _announce(
    server: object, manager: ModelManager, config: ServeConfig, tls: ServerTls | None, extra: str
) -> None:
    while not getattr(server, "started", False):
        await asyncio.sleep(0.01)
    served = ", ".join(str(s.ref) for s in manager.models.values()) or "the registry API (hub)"
    secure = "" if tls is None else " (TLS)"
    grpc = ""
    if config.grpc_port is not None:
        grpc = f", gRPC{secure} on {config.host}:{config.grpc_port}"
    scheme = "http" if tls is None else "https"
    rest = f"REST on {scheme}://{config.host}:{config.http_port}"
    mtls = "; client certificates required" if tls is not None and tls.mutual else ""
    print(f"serving {served}: {rest}{grpc}{extra}{mtls}", flush=True)
    for model in manager.models.values():
        for deployment in model.deployments.values():
            if note := deployment.settings_note():
                print(note, flush=True)


async def _watch(manager: ModelManager, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await manager.refresh()
        except Exception:
            log.exception("following moved aliases failed; will try again")


def run(
    registry: Registry,
    config: ServeConfig,
    refs: Sequence[str] = (),
    aliased: str | None = None,
    *,
    wrappers: Sequence[Wrapper] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> None:
    """Serve until SIGINT/SIGTERM, as ``modelport serve`` does; blocking, on uvloop.

    With ``config.workers`` above 1 this process supervises that many worker processes,
    each opening the registry ``registry.settings`` describe. ``wrappers`` and
    ``interceptors`` join the config's (``pipeline``) in a single process; worker processes
    build theirs from the config's import paths alone.

    Raises:
        NotFound, InvalidInput, Unavailable: at start-up (unknown model, --aliased matching none,
        a port in use, wrappers given for worker processes).
    """
    from modelport.security.exposure import check_exposure

    auth = check_exposure(config, registry.engine)
    print(
        "auth: on (every route but /v2/health/live needs an API key)"
        if auth
        else "auth: off (anyone who can reach the server may use it; --auth turns it on)",
        flush=True,
    )
    if config.process_count() > 1:
        ServerTls.load(config)  # a bad file is one error before any worker starts
        if wrappers or interceptors:
            raise InvalidInput(
                "wrappers and interceptors passed as objects cannot reach worker processes; "
                "name them in the config (http_wrappers, grpc_interceptors) as 'module:name'"
            )
        from modelport.serving.workers import run_workers

        run_workers(registry.settings, config, refs, aliased)
        return
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            serve(registry, config, refs, aliased, wrappers=wrappers, interceptors=interceptors)
        )
