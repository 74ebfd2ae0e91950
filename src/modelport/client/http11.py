"""A lean HTTP/1.1 client for the client's REST calls: keep-alive connections in a pool, one
blocking (sockets) and one for asyncio (streams), sharing the request and header encoding.

Why not httpx: on this path it cost ~3 times tritonclient's CPU per request (bench/
client_bench.py), and its asyncio pool does work quadratic in the requests waiting for a
connection (32 concurrent tasks: ~4.6 ms of CPU per request). A request here is one
``sendall`` of head and body, and a response one read of its head and one of its
``Content-Length`` body (chunked bodies are read too, for servers that send them).

A connection taken from the pool may have been closed by the server meanwhile (its idle
keep-alive timeout): when such a connection fails before any byte of the answer, the request
is sent once more on a new connection; the server cannot have seen it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["AsyncPool", "ConnectFailed", "ConnectionLost", "Pool", "Response", "TlsFailed"]

_MAX_HEAD = 64 * 1024
_STREAM_LIMIT = 1 << 20  # asyncio buffers this much before it stops reading the socket
_TLS_CLOSE_SECONDS = 5.0


class ConnectFailed(Exception):
    """No connection could be made: nothing was sent."""


class ConnectionLost(Exception):
    """The connection failed after the request was (perhaps) sent, before a whole answer.

    ``fresh``: on a connection made for this request, so the server dropped it at once (a
    TLS server given plain HTTP, or a client certificate it refuses, does that).
    """

    def __init__(self, message: str, *, fresh: bool = False) -> None:
        super().__init__(message)
        self.fresh = fresh


class TlsFailed(Exception):
    """The TLS handshake failed (the server's certificate is not trusted, or the server does
    not speak TLS): nothing was sent."""


@dataclass(slots=True)
class Response:
    """A whole response: status, headers (names lower-case) and body."""

    status_code: int
    reason_phrase: str
    headers: dict[str, str]
    content: bytes
    path: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Origin:
    """Where requests go, and what every request's head starts with."""

    def __init__(self, url: str, headers: Mapping[str, str] | None) -> None:
        parts = urlsplit(url)
        self.secure = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.secure else 80)
        self.prefix = parts.path.rstrip("/") + "/"
        netloc = parts.netloc.rpartition("@")[2]
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.common = f"Host: {netloc}\r\n{extra}"

    def request(
        self, method: str, target: str, headers: Mapping[str, str] | None, body: bytes | None
    ) -> bytes:
        path = self.prefix + target
        lines = [f"{method} {path} HTTP/1.1\r\n", self.common]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}\r\n")
        lines.append(f"Content-Length: {len(body) if body else 0}\r\n\r\n")
        head = "".join(lines).encode("latin-1")
        return head + body if body else head


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        _, status, *reason = lines[0].split(" ", 2)
        code = int(status)
    except ValueError:
        raise ConnectionLost(f"not an HTTP response: {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return code, reason[0] if reason else "", headers


def _keeps_alive(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() != "close"


class _Connection:
    def __init__(self, origin: _Origin, timeout: float, context: ssl.SSLContext | None) -> None:
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout)
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=origin.host)
            except ssl.SSLError as exc:
                sock.close()
                raise TlsFailed(_tls_reason(exc)) from None
            except TimeoutError:
                sock.close()
                raise
            except OSError as exc:  # the server closed the connection during the handshake
                sock.close()
                raise ConnectionLost(str(exc) or type(exc).__name__, fresh=True) from None
        self.sock = sock
        self.file = sock.makefile("rb")

    def exchange(self, request: bytes, timeout: float) -> tuple[int, str, dict[str, str], bytes]:
        self.sock.settimeout(timeout)
        self.sock.sendall(request)
        status_line = self.file.readline(_MAX_HEAD)
        if not status_line:
            raise EOFError
        lines = [status_line]
        while True:
            line = self.file.readline(_MAX_HEAD)
            if line in (b"\r\n", b"\n", b""):
                break
            lines.append(line)
        code, reason, headers = _parse_head(b"".join(lines).rstrip(b"\r\n"))
        if "content-length" in headers:
            body = self.file.read(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            body = self.file.read()
            headers["connection"] = "close"
        return code, reason, headers, body

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.file.readline(_MAX_HEAD).split(b";")[0], 16)
            if size == 0:
                while self.file.readline(_MAX_HEAD) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.file.read(size))
            self.file.readline(_MAX_HEAD)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError | asyncio.IncompleteReadError):
        return "the server closed the connection"
    return str(exc) or type(exc).__name__


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({exc.verify_message})"
    return f"no TLS handshake ({exc.reason or exc})"


def _context(origin: _Origin, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    if not origin.secure:
        return None
    return context or ssl.create_default_context()


class Pool:
    """Blocking keep-alive connections to one origin; safe to share between threads
    (a connection serves one request at a time; up to ``size`` idle ones are kept).

    ``https://`` connections use ``context`` (default: the system's trust store).
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        size: int,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self._origin = _Origin(url, headers)
        self._context = _context(self._origin, context)
        self._idle: deque[_Connection] = deque()
        self._size = size

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        timeout: float,
    ) -> Response:
        """Send one request and read its whole answer.

        Raises:
            ConnectFailed: no connection could be made.
            TlsFailed: the TLS handshake failed.
            ConnectionLost: the connection failed before a whole answer.
            TimeoutError: no answer within ``timeout`` seconds.
        """
        request = self._origin.request(method, target, headers, body)
        for first in (True, False):
            connection = self._take() if first else None
            reused = connection is not None
            if connection is None:
                connection = _Connection(self._origin, timeout, self._context)
            try:
                code, reason, answer_headers, content = connection.exchange(request, timeout)
            except TimeoutError:
                connection.close()
                raise TimeoutError from None
            except (OSError, EOFError, ValueError) as exc:
                connection.close()
                if reused and isinstance(exc, (EOFError, ConnectionResetError, BrokenPipeError)):
                    continue  # the server closed it while idle: it never saw this request
                raise ConnectionLost(_describe(exc), fresh=not reused) from None
            if _keeps_alive(answer_headers) and len(self._idle) < self._size:
                self._idle.append(connection)
            else:
                connection.close()
            return Response(code, reason, answer_headers, content, target)
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self) -> _Connection | None:
        try:
            return self._idle.pop()
        except IndexError:
            return None

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class AsyncPool:
    """asyncio keep-alive connections to one origin, for the tasks of one event loop;
    ``context`` as for ``Pool``."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        size: int,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self._origin = _Origin(url, headers)
        self._context = _context(self._origin, context)
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self._size = size

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        timeout: float,
    ) -> Response:
        """``Pool.request`` for asyncio; the same errors."""
        request = self._origin.request(method, target, headers, body)
        async with asyncio.timeout(timeout):
            for first in (True, False):
                connection = self._idle.pop() if first and self._idle else None
                reused = connection is not None
                if connection is None:
                    connection = await self._connect()
                reader, writer = connection
                try:
                    writer.write(request)
                    code, reason, answer_headers, content = await _read_answer(reader)
                except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as exc:
                    writer.close()
                    stale = isinstance(exc, (EOFError, ConnectionResetError, BrokenPipeError))
                    if reused and stale:
                        continue
                    raise ConnectionLost(_describe(exc), fresh=not reused) from None
                except BaseException:  # a timeout or a cancellation: the answer is still due
                    writer.close()
                    raise
                if _keeps_alive(answer_headers) and len(self._idle) < self._size:
                    self._idle.append(connection)
                else:
                    writer.close()
                return Response(code, reason, answer_headers, content, target)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        origin = self._origin
        try:
            reader, writer = await asyncio.open_connection(
                origin.host, origin.port, ssl=self._context, limit=_STREAM_LIMIT
            )
        except ssl.SSLError as exc:
            raise TlsFailed(_tls_reason(exc)) from None
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        sock: Any = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def aclose(self) -> None:
        writers = [writer for _, writer in self._idle]
        self._idle.clear()
        for writer in writers:
            writer.close()
        if writers and self._context is not None:
            # A TLS connection closes only once its close_notify is exchanged: wait for it
            # (briefly), or an event loop closed right after would leave them half-open.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TLS_CLOSE_SECONDS):
                    await asyncio.gather(
                        *(writer.wait_closed() for writer in writers), return_exceptions=True
                    )


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str], bytes]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError from None
        raise
    except asyncio.LimitOverrunError:
        raise ValueError("response head over 1 MiB") from None
    code, reason, headers = _parse_head(head[:-4])
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(parts)
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return code, reason, headers, body
