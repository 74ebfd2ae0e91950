"""The worker processes of one server (``serve --workers N``) talking to each other.

Each worker listens on a Unix socket in the server's private run directory (mode 0700, so
only the user who started the server can connect). The channel carries the few things that
must be the same in every worker, never inference:

- ``load`` / ``unload``: a repository call reaches one worker through the shared port; that
  worker applies it, then has every other worker apply it, and answers only when all did.
- ``metrics``: the worker answering ``/metrics`` merges every other worker's series.
- ``ready``: the server is ready once every worker has been ready (each joins the port
  only when its models are warm), so a client that connects when told "ready" is spread
  over all of them.
- ``state``: a worker that joins late (started after the others, or replacing one that
  died) first takes the repository state of one that runs: models added or unloaded
  through the API since start-up. A worker not running when a call is broadcast is
  skipped; it catches up this way when it starts.

One JSON line asks, one JSON line answers; a connection per call (these calls are rare).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from modelport.errors import InvalidInput, ModelportError, Unavailable, error_from_code

if TYPE_CHECKING:
    from modelport.serving.manager import ModelManager

__all__ = ["PeerGroup", "socket_path"]

log = logging.getLogger(__name__)

# A metrics snapshot of a server with many models is the largest message; 64 MiB is far
# above it and still bounds what a confused peer can make us buffer.
_LINE_LIMIT = 64 * 2**20
_METRICS_WAIT = 5.0
# What connecting to a worker that is not listening (yet, or any more) raises.
_NOT_RUNNING = (FileNotFoundError, ConnectionRefusedError)


def socket_path(run_dir: Path, index: int) -> Path:
    """Where worker ``index`` of the server whose run directory is ``run_dir`` listens."""
    return run_dir / f"worker-{index}.sock"


class PeerGroup:
    """This worker's end of the channel: answers the others and calls them."""

    def __init__(self, index: int, count: int, run_dir: Path, manager: ModelManager) -> None:
        self.index = index
        self.count = count
        self.run_dir = run_dir
        self.manager = manager
        self.joined = count == 1
        """Every worker has been ready once (a worker that dies later is replaced)."""
        self._server: asyncio.Server | None = None
        self._watching: asyncio.Task[None] | None = None

    @property
    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    async def start(self) -> None:
        path = socket_path(self.run_dir, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this worker's predecessor, if it died
        self._server = await asyncio.start_unix_server(
            self._answer, path=str(path), limit=_LINE_LIMIT
        )

    def watch_group(self) -> None:
        """Set ``joined`` once every other worker answers that it is ready."""
        self._watching = asyncio.create_task(self._watch_group())

    async def _watch_group(self) -> None:
        waiting = set(self.others)
        while waiting:
            for index in list(waiting):
                with contextlib.suppress(OSError, ModelportError, ValueError):
                    if await asyncio.wait_for(self._call(index, {"op": "ready"}), 5.0):
                        waiting.discard(index)
            if waiting:
                await asyncio.sleep(0.1)
        self.joined = True

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # -- asking the others -----------------------------------------------------------------

    async def broadcast(self, op: str, name: str) -> None:
        """Have every other worker apply ``op`` (load, unload) to model ``name``.

        Raises:
            The first worker's error, naming the worker, when any of them failed.
        """
        results = await asyncio.gather(
            *(self._call(i, {"op": op, "name": name}) for i in self.others),
            return_exceptions=True,
        )
        for index, result in zip(self.others, results, strict=True):
            if isinstance(result, ModelportError):
                raise error_from_code(result.code, f"worker {index}: {result.message}")
            if isinstance(result, _NOT_RUNNING):
                continue  # starting or restarting: it takes the state when it joins
            if isinstance(result, BaseException):
                raise Unavailable(f"worker {index} did not answer: {result}") from result

    async def catch_up(self) -> None:
        """Take the repository state of the first other worker that answers, if any."""
        for index in self.others:
            try:
                state = await self._call(index, {"op": "state"})
            except (*_NOT_RUNNING, ModelportError) as exc:
                log.debug("worker %d has no state to give: %s", index, exc)
                continue
            for entry in state:
                name = entry["name"]
                if entry["enabled"] and name not in self.manager.models:
                    await self.manager.load(name, everywhere=False)
                elif not entry["enabled"] and name in self.manager.models:
                    await self.manager.unload(name, everywhere=False)
            return

    async def metrics(self) -> list[dict[str, list[list[Any]]]]:
        """Every other worker's metrics snapshot; a worker that is restarting is left out."""
        calls = [
            asyncio.wait_for(self._call(i, {"op": "metrics"}), _METRICS_WAIT) for i in self.others
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        snapshots = []
        for index, result in zip(self.others, results, strict=True):
            if isinstance(result, _NOT_RUNNING):
                log.debug("worker %d is not running; its metrics are left out", index)
            elif isinstance(result, BaseException):
                log.warning("worker %d gave no metrics: %s", index, result or type(result).__name__)
            else:
                snapshots.append(result)
        return snapshots

    async def _call(self, index: int, message: dict[str, Any]) -> Any:
        path = socket_path(self.run_dir, index)
        reader, writer = await asyncio.open_unix_connection(str(path), limit=_LINE_LIMIT)
        try:
            writer.write(orjson.dumps(message) + b"\n")
            await writer.drain()
            answer = orjson.loads(await reader.readline())
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if "error" in answer:
            raise error_from_code(answer["code"], answer["error"])
        return answer["result"]

    # -- answering -------------------------------------------------------------------------

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = orjson.loads(await reader.readline())
            try:
                answer = {"result": await self._apply(message)}
            except ModelportError as exc:
                answer = {"error": exc.message, "code": exc.code}
            writer.write(orjson.dumps(answer) + b"\n")
            await writer.drain()
        except Exception:
            log.exception("a message from another worker failed")
        finally:
            writer.close()

    async def _apply(self, message: dict[str, Any]) -> Any:
        op = message.get("op")
        if op == "metrics":
            return self.manager.metrics.snapshot()
        if op == "ready":
            return self.manager.ready_here()
        if op == "state":
            return [
                {"name": served.name, "enabled": served.enabled}
                for served in self.manager.models.values()
            ]
        if op == "load":
            await self.manager.load(message["name"], everywhere=False)
            return None
        if op == "unload":
            await self.manager.unload(message["name"], everywhere=False)
            return None
        raise InvalidInput(f"unknown message {op!r} between workers")
