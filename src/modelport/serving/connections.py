"""HTTP connection limits that uvicorn's httptools protocol lacks.

uvicorn times out only a keep-alive connection that has finished a response. A connection
that never sends a request, sends half a request head, or stops half-way through a body
stays open forever, and a request head may be any size (63 MiB of headers were answered).
``limited_protocol`` returns uvicorn's protocol with, per connection:

- an idle timeout from the moment it opens (uvicorn's keep-alive timer, armed at once);
- a head timeout: the whole request line and headers within ``head_timeout`` seconds of
  their first byte, else 408;
- a body timeout: a request body that makes no progress for ``body_timeout`` seconds gets
  408 (time the app itself is not reading does not count);
- a head size cap: ``max_head_bytes`` of request line and headers, else 431;
- a connection limit: a request on a connection beyond ``max_connections`` gets 503 (unlike
  uvicorn's ``limit_concurrency``, which answers text/plain and logs each refusal);
- malformed HTTP gets a JSON 400 without a log line per request.

Every refusal is JSON ``{"error": ..., "code": ...}``, counted in
``modelport_http_refused_total{reason}`` and not logged: a client must not be able to fill
the log. Timers are armed only when a head
or body is still incomplete after a read, so a request that arrives in one read (the common
case) arms no timer and pays only a few attribute checks.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelport.serving.http import code_for_status, error_body

__all__ = ["HttpLimits", "limited_protocol"]

# How long a refused connection keeps draining what the client still sends before it is
# closed: closing with unread data makes the kernel send RST, and the client may lose the
# response it has not read yet.
_LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits of the REST server (``ServeConfig`` holds the settings)."""

    keep_alive_timeout: int
    head_timeout: float
    body_timeout: float
    max_head_bytes: int
    max_connections: int


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is in ``_refusal``."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of ``HttpLimits``. Event loop only.

    Build one per server with ``limited_protocol``: uvicorn creates the protocol itself, so
    its collaborators are class attributes of that subclass.
    """

    limits: ClassVar[HttpLimits]
    refused: ClassVar[Any]  # the modelport_http_refused family

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive_timeout
        self._head_pending = True  # between requests, or inside a request head
        self._head_bytes = 0
        self._in_body = False
        self._body_seen = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None
        self._lingering = False

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms this only after a response: a connection that never sends a request
        # would otherwise stay open for good.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # a refused connection: read and drop until it closes
        self._unset_keepalive_if_required()
        if self._head_pending:
            self._head_bytes += len(data)
        elif self._body_timer is not None:
            self._body_seen = self.loop.time()  # the body made progress
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here (websockets are off): the request was answered as
            # plain HTTP, and whatever follows it is not HTTP/1.1, so end the connection.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        except httptools.HttpParserError as exc:
            status, reason, message = self._refusal or (
                400,
                "malformed",
                f"malformed HTTP request: {exc}",
            )
            self._refuse(status, reason, message)
            return
        # (Nothing in a feed closes the transport: refusals raise, and the app runs later.)
        if self._head_pending:
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, "headers_too_large", self._too_large_message())
            elif self._head_bytes and self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.head_timeout, self._head_timed_out
                )
        elif self._in_body and self._body_timer is None:
            self._body_seen = self.loop.time()
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    # -- parser callbacks --------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._cancel_head_timer()
        limits = self.limits
        # The bytes counted may include body that came in the same read: measure the head
        # itself only then, so that most requests skip the sum.
        if self._head_bytes > limits.max_head_bytes and _head_size(self) > limits.max_head_bytes:
            self._refusal = (431, "headers_too_large", self._too_large_message())
            raise _Refused
        if len(self.connections) > limits.max_connections:
            self._refusal = (
                503,
                "too_many_connections",
                f"the server has {len(self.connections) - 1} connections open, its limit; "
                "retry later",
            )
            raise _Refused
        self._in_body = True
        HttpToolsProtocol.on_headers_complete(self)  # not super(): this runs per request

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_body_timer()
        self._head_pending = True
        self._head_bytes = 0
        HttpToolsProtocol.on_message_complete(self)

    # -- timers ------------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_pending and not self.transport.is_closing():
            seconds = self.limits.head_timeout
            self._refuse(
                408, "head_timeout", f"the request head did not arrive within {seconds:g} s"
            )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        timeout = self.limits.body_timeout
        idle = self.loop.time() - self._body_seen
        if self.flow.read_paused:  # the app is not reading: not the client's delay
            idle = 0.0
            self._body_seen = self.loop.time()
        if idle < timeout:
            self._body_timer = self.loop.call_later(timeout - idle, self._body_timed_out)
            return
        message = f"the request body stalled: no data for {timeout:g} s"
        if self.cycle is not None and self.cycle.response_started:
            self.refused.labels("body_timeout").inc()
            self.transport.close()
        else:
            self._refuse(408, "body_timeout", message)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # -- refusals ----------------------------------------------------------------------------

    def _too_large_message(self) -> str:
        return (
            f"the request line and headers are over the {self.limits.max_head_bytes}-byte "
            "limit; send less in headers"
        )

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` with a JSON error, then close the connection gracefully."""
        self.refused.labels(reason).inc()
        self._cancel_head_timer()
        self._cancel_body_timer()
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's request (if any) ends; its send is dropped
            self.cycle.message_event.set()
        body = error_body(message, code_for_status(status))
        head = [
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if status == 503:
            head.append("retry-after: 1")
        self.transport.write("\r\n".join([*head, "", ""]).encode("latin-1") + body)
        self._lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def _head_size(protocol: HttpToolsProtocol) -> int:
    """Bytes of the request line and headers as received (give or take the separators)."""
    size = len(protocol.url) + 16
    for name, value in protocol.headers:
        size += len(name) + len(value) + 4
    return size


def limited_protocol(limits: HttpLimits, refused: Any) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)`` for one server.

    ``refused`` is the ``modelport_http_refused`` metric family, labelled by reason.
    """
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "refused": refused},
    )
