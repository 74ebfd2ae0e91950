"""The audit entries of the repository extension: who loaded or unloaded which model.

REST (``/v2/repository/models/{m}/load|unload``) and gRPC (``RepositoryModelLoad/Unload``)
wrap their ``ModelManager`` call in ``recorded``. Only the worker that received the request
records it; the others apply the broadcast without a second entry, and a reload made by
``serve --watch`` follows an alias move that is on record already.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from modelport.errors import ModelportError
from modelport.registry import Registry
from modelport.security.audit import AuditLog
from modelport.security.principal import Principal, current, local_principal

__all__ = ["grpc_caller", "recorded"]


@contextlib.asynccontextmanager
async def recorded(
    registry: Registry, action: str, name: str, principal: Principal
) -> AsyncIterator[dict[str, Any]]:
    """Record ``action`` on model ``name`` by ``principal`` once the block ends: ``ok``, or
    ``failed`` with the error's code when it raises a ``ModelportError`` (re-raised). The
    block may add to the yielded detail (the version loaded). The write runs off the event
    loop."""
    detail: dict[str, Any] = {}
    log = AuditLog(registry.engine)
    try:
        yield detail
    except ModelportError as exc:
        failed = {**detail, "code": exc.code, "error": str(exc)}
        await asyncio.to_thread(
            log.append, action, name, outcome="failed", detail=failed, principal=principal
        )
        raise
    await asyncio.to_thread(log.append, action, name, detail=detail, principal=principal)


def grpc_caller(context: Any) -> Principal:
    """Who makes a gRPC call: the principal the auth interceptor set (``current``), or on a
    server with auth off ``anonymous`` at the peer's address."""
    found = current()
    if found is not local_principal():
        return found
    peer = str(context.peer() or "")
    # grpc names peers "ipv4:127.0.0.1:5000" or "ipv6:[::1]:5000"; keep the host:port.
    address = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer or None
    return Principal("anonymous", address=address)
