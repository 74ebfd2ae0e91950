"""The REST edge of auth: an ASGI wrapper in front of every route, ``/infer`` included.

It reads ``Authorization`` from the raw scope headers (no ``Request`` object), classifies
the request (``policy.http_rule``), asks the ``Gate``, and either answers the refusal itself
(401 with ``WWW-Authenticate``, 403, 429 with ``Retry-After`` and ``RateLimit-*``; the body
is the usual ``{"error", "code"}``) or passes the request on with the principal in
``scope[PRINCIPAL_KEY]``. REST routes that need the caller read it there
(``principal.of_request``), so the inference path pays for no context variable.

An accepted response carries the ``RateLimit-*`` headers once its key has used half of its
burst (``Bucket.low``): a client nearing its limit learns how near, and the common case
pays nothing for them (wrapping ``send`` costs ~4 us a request, measured).
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.security.gate import Client, Denied, Gate, rate_headers
from modelport.security.policy import Rule, http_rule
from modelport.security.principal import PRINCIPAL_KEY
from modelport.security.ratelimit import Bucket
from modelport.serving.http import error_body

__all__ = ["AuthWrapper"]

_AUTHORIZATION = b"authorization"
_MAX_RULES = 10_000


class AuthWrapper:
    """``app`` behind the ``gate``: only requests it admits reach ``app``."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self._app = app
        self._gate = gate
        self._rules: dict[tuple[str, str], Rule] = {}  # the rule of each (method, path) seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == _AUTHORIZATION:
                header = value
                break
        client = scope.get("client")
        if type(client) is not tuple:  # uvicorn's is; a list (other servers) is no dict key
            client = f"{client[0]}:{client[1]}" if client else "unknown"
        # The hot path: this header, on this connection, was admitted to this route since the
        # gate last refreshed its keys (which empties ``remembered``). Anything else (an
        # address being limited, an expired key, an empty bucket) takes the full path below.
        seen = (header, scope["method"], scope["path"], client)
        gate = self._gate
        admitted = gate.remembered.get(seen)
        if admitted is not None and not gate.failures.active:
            expires = admitted.expires_at
            bucket = admitted.bucket
            if (expires is None or expires > datetime.now(UTC)) and (
                bucket is None or bucket.take()
            ):
                scope[PRINCIPAL_KEY] = admitted.principal
                if bucket is None or not bucket.low:
                    await self._app(scope, receive, send)
                else:
                    await self._app(scope, receive, _with_rate_headers(send, bucket))
                return
        await self._check(scope, receive, send, header=header, client=client, seen=seen)

    async def _check(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        header: bytes | None,
        client: Client,
        seen: tuple[object, ...],
    ) -> None:
        """The full path: the route's rule, then the gate's every check."""
        request = (scope["method"], scope["path"])
        rule = self._rules.get(request)
        if rule is None:
            rule = http_rule(*request)
            if len(self._rules) >= _MAX_RULES:
                self._rules.clear()
            self._rules[request] = rule
        if rule.scope is None:
            await self._app(scope, receive, send)
            return
        authorization = header.decode("latin-1") if header is not None else None
        try:
            admitted = self._gate.admit(authorization, client, rule.scope, rule.model, request)
        except Denied as denied:
            await _refuse(denied, send)
            return
        remembered = self._gate.remembered
        if len(remembered) >= _MAX_RULES:
            remembered.clear()
        remembered[seen] = admitted
        scope[PRINCIPAL_KEY] = admitted.principal
        bucket = admitted.bucket
        if bucket is None or not bucket.low:
            await self._app(scope, receive, send)
        else:
            await self._app(scope, receive, _with_rate_headers(send, bucket))


async def _refuse(denied: Denied, send: Send) -> None:
    body = error_body(denied.error.message, denied.error.code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *denied.headers,
    ]
    status = denied.error.http_status
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _with_rate_headers(send: Send, bucket: Bucket) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            # As of the response: other requests of the key may have taken tokens since.
            message["headers"] = [*message.get("headers", ()), *rate_headers(bucket)]
        await send(message)

    return sending
