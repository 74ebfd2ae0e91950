"""HTTP edge helpers: JSON responses, bounded body reads, and error responses.

An error's status is its class's ``http_status`` (errors.py is the one table); its body is
the wire contract ``{"error": message, "code": code}``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from modelport.errors import (
    Internal,
    InvalidInput,
    ModelportError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Timeout,
)

__all__ = [
    "code_for_status",
    "error_body",
    "error_response",
    "header_values",
    "json_response",
    "read_body",
    "receive_body",
]

INFLATE_INLINE_BYTES = 1024
"""Compressed bodies up to this size are inflated on the event loop, larger ones in a thread.
Deflate expands at most ~1,032-fold, so inline inflation costs at most ~1 MiB and a
millisecond or two; a thread hand-off would cost more than the small bodies clients send."""

_RETRY = {"Retry-After": "1"}


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


# The code of an error answered below the app (the HTTP parser, Starlette's router), which
# knows only a status: the class a client would map that status to.
_CODE_OF_STATUS = {
    404: NotFound.code,
    408: Timeout.code,
    413: PayloadTooLarge.code,
    431: PayloadTooLarge.code,
    503: Overloaded.code,
}


def code_for_status(status: int) -> str:
    """The error code of a refusal known only by its HTTP ``status``."""
    found = _CODE_OF_STATUS.get(status)
    if found is not None:
        return found
    return InvalidInput.code if status < 500 else Internal.code


def error_body(message: str, code: str) -> bytes:
    """The wire contract of an HTTP error: ``{"error": message, "code": code}``."""
    return orjson.dumps({"error": message, "code": code})


def error_response(error: ModelportError) -> Response:
    """``error`` as its status and JSON body; a 503 (not ready, overloaded: worth a retry)
    says when to retry. No other status does: retrying a deterministic failure fails again."""
    status = error.http_status
    return Response(
        error_body(error.message, error.code),
        status_code=status,
        media_type="application/json",
        headers=_RETRY if status == 503 else None,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them where it can.

    gzip/deflate bodies (``Content-Encoding``, as tritonclient sends them) are inflated with
    the same limit on the result.
    """
    headers = request.headers
    return await receive_body(
        request.receive,
        limit,
        headers.get("content-length"),
        headers.get("content-encoding"),
    )


async def receive_body(
    receive: Receive, limit: int, declared: str | None, encoding: str | None
) -> bytes:
    """``read_body`` for a raw ASGI endpoint: the ``Content-Length`` and
    ``Content-Encoding`` header values are passed in, the body read from ``receive``.

    Raises:
        PayloadTooLarge: over ``limit`` bytes, declared or read (or once inflated).
        InvalidInput: an unsupported or corrupt encoding.
        ClientDisconnect: the client went away before the body was complete.
    """
    # isascii(): str.isdigit() also takes '²', which int() refuses. (The HTTP parser refuses
    # such a Content-Length before it gets here; an app served some other way may not.)
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    body = await _receive_all(receive, limit)
    if encoding:
        encoding = encoding.lower()
        if encoding in ("gzip", "deflate"):
            if len(body) <= INFLATE_INLINE_BYTES:
                return _inflate(body, encoding, limit)
            # zlib lets go of the GIL while it inflates: a large body (or a compression
            # bomb, inflated up to ``limit``) no longer stalls every other client.
            return await asyncio.to_thread(_inflate, body, encoding, limit)
        if encoding != "identity":
            raise InvalidInput(
                f"Content-Encoding {encoding!r} is not supported; use gzip or deflate"
            )
    return body


async def _receive_all(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the common case: one message, no copy
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def header_values(raw: Iterable[tuple[bytes, bytes]], names: tuple[bytes, ...]) -> list[str | None]:
    """The values of ``names`` (lower-case) among an ASGI scope's raw headers, in one pass."""
    values: list[str | None] = [None] * len(names)
    for key, value in raw:
        if key in names:
            values[names.index(key)] = value.decode("latin-1")
    return values


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding}: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body is over the {limit}-byte limit")
    if not inflater.eof:
        raise InvalidInput(f"request body is not valid {encoding}: it is cut short")
    return data
