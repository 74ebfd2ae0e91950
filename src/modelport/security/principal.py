"""Who is acting: the principal of a request or of a local command, and what it may do.

Scopes are ordered, each including those before it: ``predict`` < ``read`` < ``write`` <
``admin``. A principal's ``models`` are name patterns (``fnmatch``: ``iris*``); ``("*",)``
grants every model. The edge that authenticated a request sets ``current`` for the time the
request runs (contextvars reach ``asyncio.to_thread``), so the registry and the audit log
learn who acted without every signature carrying it.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelport.errors import InvalidInput

__all__ = [
    "PRINCIPAL_KEY",
    "SCOPES",
    "Principal",
    "Scope",
    "acting_as",
    "current",
    "local_principal",
    "of_request",
    "scope_includes",
    "validate_scope",
]

Scope = Literal["predict", "read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("predict", "read", "write", "admin")
_RANK: dict[str, int] = {scope: rank for rank, scope in enumerate(SCOPES)}


def validate_scope(scope: str) -> Scope:
    """``scope`` if it is one modelport knows, else ``InvalidInput`` listing them."""
    if scope not in _RANK:
        raise InvalidInput(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    return scope  # type: ignore[return-value]


def scope_includes(held: str, needed: str) -> bool:
    """Whether a key with scope ``held`` may do what needs ``needed``."""
    return _RANK[held] >= _RANK[needed]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: a key's name (``key:ci``), a local user (``local:alice``), or
    ``anonymous`` (a server with auth off)."""

    name: str
    scope: Scope = "admin"
    models: tuple[str, ...] = ("*",)
    address: str | None = None
    """The client's address (``host:port``) for requests; None for local commands."""
    key_id: str | None = None

    def may(self, needed: str) -> bool:
        return _RANK[self.scope] >= _RANK[needed]

    def may_see(self, model: str) -> bool:
        """Whether the grant covers the model named ``model``."""
        return any(p == "*" or fnmatch.fnmatchcase(model, p) for p in self.models)


@functools.cache
def local_principal() -> Principal:
    """The person running a local command: ``local:<login name>``, with every right (whoever
    can open the database and the store can do anything anyway)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        user = "unknown"
    return Principal(f"local:{user}")


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "modelport_principal", default=None
)


def current() -> Principal:
    """Who is acting now: the request's principal inside a request, else the local user."""
    return _current.get() or local_principal()


class _Acting:
    # A class, not @contextmanager: the auth edge enters one per request, and a generator
    # based context manager costs ~2 us more.
    __slots__ = ("_principal", "_token")

    def __init__(self, principal: Principal) -> None:
        self._principal = principal

    def __enter__(self) -> Principal:
        self._token = _current.set(self._principal)
        return self._principal

    def __exit__(self, *_: object) -> None:
        _current.reset(self._token)


def acting_as(principal: Principal) -> contextlib.AbstractContextManager[Principal]:
    """Make ``principal`` ``current`` inside the block (and in threads started from it)."""
    return _Acting(principal)


PRINCIPAL_KEY = "modelport.principal"
"""The ASGI scope key (and gRPC context attribute) where the auth edge leaves the principal."""


def of_request(scope: Mapping[str, Any]) -> Principal:
    """The principal the auth edge found for an ASGI request; on a server with auth off,
    ``anonymous`` at the client's address."""
    found = scope.get(PRINCIPAL_KEY)
    if isinstance(found, Principal):
        return found
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else None
    return Principal("anonymous", address=address)
