"""``serve --workers N``: several server processes sharing the ports, to use every core.

One Python process serves a cheap model at what its event loop can parse, about one core;
N worker processes serve about N times that (measured: bench/RESULTS.md). The supervisor
(this module, the process the user started) checks that the ports are free; every worker
then binds them with SO_REUSEPORT, and the kernel spreads new connections evenly over the
workers. Each worker is a whole server: every model, its own batcher and queues, and as
many inference streams as one process would run. The cores are not divided between the
workers: a gRPC client sends all its calls on one connection, which one worker serves, and a
worker with half the streams served such a client at half the speed (bench/RESULTS.md).

Memory: every worker holds every model, as in MLServer, but not every copy of the weights:
ONNX models are loaded from an optimized file whose weights onnxruntime mmaps, so the page
cache holds one copy for all workers (``runtimes/onnx/shared_weights``) of the weights kernels read
as stored (convolutions, embeddings); MatMul/Gemm weights are repacked in each worker, and
other formats' weights are private to each worker.

Start-up: worker 0 starts first and builds whatever the others can reuse (checkouts,
optimized graphs); the rest start once it has loaded, and join the ports only when their
models are warm. The server reports ready once every worker has been (``PeerGroup``), so
clients that connect when told "ready" are spread over all of them. A worker that dies is
replaced the same way. SIGTERM or SIGINT to the supervisor drains every worker, then exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from modelport.config import Settings
from modelport.errors import ModelportError, Unavailable, error_from_code
from modelport.serving.config import ServeConfig
from modelport.serving.server import WorkerRole

__all__ = ["run_workers"]

log = logging.getLogger(__name__)

# A worker that keeps dying right after it starts is restarted ever more slowly.
_FIRST_BACKOFF, _MAX_BACKOFF, _STABLE_SECONDS = 0.5, 30.0, 30.0
# Temp-file cleaners (systemd-tmpfiles: 10 days) delete what looks unused; the workers'
# sockets must outlive them however long the server runs.
_TOUCH_SECONDS = 3600.0


@dataclass(frozen=True)
class _Plan:
    """What every worker is given (pickled to it)."""

    settings: Settings
    config: ServeConfig
    refs: list[str]
    aliased: str | None
    run_dir: Path


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    first: bool
    """The server's first worker, started alone: its start-up failure ends the command.
    A replacement's is logged, and it is started again."""
    started_at: float = field(default_factory=time.monotonic)
    loaded: bool = False


def run_workers(
    settings: Settings, config: ServeConfig, refs: Sequence[str], aliased: str | None
) -> None:
    """Run ``config.process_count()`` server processes until SIGTERM/SIGINT; blocking.

    Raises:
        The first worker's start-up error (unknown model, bad option, busy port), after
        stopping everything.
    """
    http_port = _free_port(config.host, config.http_port, "REST", "--http-port")
    grpc_port = None
    if config.grpc_port is not None:
        grpc_port = _free_port(
            config.host, config.grpc_port, "gRPC", "--grpc-port, or turn gRPC off with --no-grpc"
        )
    config = config.model_copy(update={"http_port": http_port, "grpc_port": grpc_port})
    run_dir = Path(tempfile.mkdtemp(prefix="modelport-serve-"))  # mode 0700
    try:
        plan = _Plan(settings, config, list(refs), aliased, run_dir)
        with _signals_recorded() as received:
            _Supervisor(plan, received).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, plan: _Plan, received: list[int]) -> None:
        self.plan = plan
        self.received = received
        self.count = plan.config.process_count()
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.backoff: dict[int, float] = {}

    def run(self) -> None:
        try:
            self._start(0, join_when_loaded=False)
            self._supervise()
        finally:
            self._stop_all()

    def _supervise(self) -> None:
        first_group_started = False
        touched = time.monotonic()
        while not self.received:
            if time.monotonic() - touched > _TOUCH_SECONDS:
                _touch(self.plan.run_dir)
                touched = time.monotonic()
            waitables: list[Any] = []
            for worker in self.workers.values():
                waitables += [worker.conn, worker.process.sentinel]
            for ready in wait(waitables, timeout=0.5):
                self._handle(ready)
            first = self.workers.get(0)
            if not first_group_started and first is not None and first.loaded:
                first_group_started = True
                for index in range(1, self.count):
                    self._start(index, join_when_loaded=True)

    def _handle(self, ready: Any) -> None:
        for worker in list(self.workers.values()):
            if ready is worker.conn:
                self._message(worker)
            elif ready is worker.process.sentinel:
                self._died(worker)

    def _message(self, worker: _Worker) -> bool:
        """Act on one message from ``worker``; False when it has nothing more to say."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return False  # it died; its sentinel says so
        if message[0] == "loaded":
            worker.loaded = True
        elif message[0] == "failed" and worker.first and not worker.loaded:
            # The first worker's start-up failing is the command's failure: every worker
            # would fail the same way (unknown model, bad option, busy gRPC port).
            # It crossed the process boundary as its stable code: the same class here.
            raise error_from_code(message[1], message[2])
        elif message[0] == "failed":
            log.error("worker %d failed to start: %s", worker.index, message[2])
        return True

    def _died(self, worker: _Worker) -> None:
        while worker.conn.poll() and self._message(worker):
            pass  # what it said before dying comes first (its error)
        worker.process.join()
        code = worker.process.exitcode
        del self.workers[worker.index]
        if self.received:
            return
        if worker.first and not worker.loaded:
            raise Unavailable(
                f"the server's first worker exited (code {code}) before it was ready; "
                "see the messages above"
            )
        lived = time.monotonic() - worker.started_at
        delay = self.backoff.get(worker.index, _FIRST_BACKOFF)
        delay = _FIRST_BACKOFF if lived > _STABLE_SECONDS else min(delay * 2, _MAX_BACKOFF)
        self.backoff[worker.index] = delay
        sys.stderr.write(
            f"modelport: worker {worker.index} (pid {worker.process.pid}) exited with code "
            f"{code}; starting a new one in {delay:g}s\n"
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.received:
            time.sleep(0.05)
        if not self.received:
            self._start(worker.index, join_when_loaded=True)

    def _start(self, index: int, *, join_when_loaded: bool) -> None:
        parent, child = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            name=f"modelport-worker-{index}",
            args=(self.plan, index, self.count, join_when_loaded, child),
        )
        process.start()
        child.close()
        self.workers[index] = _Worker(index, process, parent, first=not join_when_loaded)

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), then wait; SIGKILL what outlives the drain."""
        for worker in self.workers.values():
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.plan.config.drain_seconds + 10.0
        for worker in self.workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers.clear()


def _worker_main(
    plan: _Plan, index: int, count: int, join_when_loaded: bool, conn: Connection
) -> None:
    """One worker process: a whole server on the supervisor's socket."""
    import asyncio

    import uvloop

    from modelport.registry import Registry
    from modelport.serving.server import serve

    _die_with_parent()
    # Out of the terminal's process group: Ctrl-C reaches the supervisor alone, which then
    # drains the workers once (a second signal would make uvicorn skip the drain).
    os.setpgrp()
    logging.basicConfig(level=logging.WARNING, format=f"worker {index}: %(message)s")

    def report(state: str) -> None:
        with contextlib.suppress(OSError):
            conn.send((state,))

    role = WorkerRole(index, count, plan.run_dir, join_when_loaded, report)
    registry = None
    try:
        registry = Registry(plan.settings)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(registry, plan.config, plan.refs, plan.aliased, role=role))
    except ModelportError as exc:
        with contextlib.suppress(OSError):
            conn.send(("failed", exc.code, exc.message))
        sys.exit(1)  # the supervisor raises the error itself; the CLI gives its exit code
    finally:
        if registry is not None:
            registry.close()


def _touch(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        for path in (run_dir, *run_dir.iterdir()):
            os.utime(path)


def _die_with_parent() -> None:
    """Have the kernel SIGTERM this worker if its supervisor dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port(host: str, port: int, what: str, choose: str) -> int:
    """``port``, checked free now; port 0 picks one. Workers bind it with SO_REUSEPORT,
    which would silently share a port that another server holds the same way: the check
    binds without it, so any holder makes it fail."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise Unavailable(
                f"cannot listen for {what} on {host}:{port}: {exc.strerror}; "
                f"choose another with {choose}"
            ) from None
        found: int = probe.getsockname()[1]
    return found


@contextlib.contextmanager
def _signals_recorded() -> Iterator[list[int]]:
    """SIGTERM and SIGINT end the supervisor's loop instead of the process."""
    received: list[int] = []
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda sig, _: received.append(sig)) for sig in handled}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
