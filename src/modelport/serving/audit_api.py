"""``/api/v1/audit``: the audit log over HTTP, for admins (the auth edge classifies every
``/api/v1/audit...`` route as ``admin``).

``GET /api/v1/audit`` lists entries oldest first, with the filters of ``AuditLog.entries`` as
query parameters (``since`` takes what ``modelport audit --since`` takes); ``GET
/api/v1/audit/verify[?expect_head=HASH]`` walks the chain and answers the ``AuditCheck`` (200
either way: a broken chain is a finding, not a failed request).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelport.errors import InvalidInput
from modelport.registry import Registry
from modelport.security.audit import AuditLog, parse_since
from modelport.serving.http import json_response

__all__ = ["routes"]

_FILTERS = frozenset({"since", "model", "actor", "action", "limit"})


def routes(registry: Registry) -> list[BaseRoute]:
    """The audit routes over ``registry``'s database."""
    log = AuditLog(registry.engine)

    async def entries(request: Request) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - _FILTERS)
        if unknown:
            raise InvalidInput(
                f"unknown query parameter(s) {', '.join(unknown)}; "
                f"the audit log filters by {', '.join(sorted(_FILTERS))}"
            )
        since = query.get("since")
        found = await asyncio.to_thread(
            log.entries,
            since=parse_since(since) if since else None,
            model=query.get("model"),
            actor=query.get("actor"),
            action=query.get("action"),
            limit=_limit(query.get("limit")),
        )
        return json_response([entry.to_dict() for entry in found])

    async def verify(request: Request) -> Response:
        anchor = request.query_params.get("expect_head")
        check = await asyncio.to_thread(log.verify, expect_head=anchor or None)
        return json_response(check.to_dict())

    return [
        Route("/api/v1/audit", entries, methods=["GET"]),
        Route("/api/v1/audit/verify", verify, methods=["GET"]),
    ]


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"limit must be a whole number of entries, 1 or more, not {text!r}")
    return int(text)
