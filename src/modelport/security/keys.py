"""API keys: made once, shown once, stored only as a hash (table ``api_keys``).

A key reads ``mp_<key_id>_<secret>``: ``key_id`` is 12 lower-case hex characters, public and
stored (``keys ls`` shows it), so the server finds the record without scanning; ``secret`` is
43 characters of ``secrets.token_urlsafe(32)``. What is stored is the sha256 of the whole
key, compared in constant time. Every way a key can fail (malformed, unknown, wrong secret,
expired, revoked) is the same ``Unauthorized``, so a caller learns nothing about which.

A key's name is never reused: a revoked key keeps its record and its name, so that the audit
log's ``key:<name>`` entries always name one key. Make a new one under a new name (``ci-2``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update

from modelport.errors import Conflict, InvalidInput, NotFound, Unauthorized
from modelport.registry import schema
from modelport.registry.db import read_transaction, write_transaction
from modelport.security import audit
from modelport.security.principal import Principal, Scope, current, validate_scope
from modelport.types import validate_name

__all__ = [
    "INVALID_KEY",
    "KeyRecord",
    "KeyStore",
    "Rate",
    "hash_key",
    "parse_duration",
    "parse_rate",
    "split_key",
]

INVALID_KEY = "missing or invalid API key"
"""The one message for every key that is not accepted: never say which check failed."""

PREFIX = "mp_"
_KEY_RE = re.compile(r"mp_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*([smh])")


@dataclass(frozen=True, slots=True)
class Rate:
    """A request rate: ``count`` per ``per_seconds`` (``100/s``, ``6000/m``, ``10/h``)."""

    count: float
    per_seconds: int
    text: str

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds


def parse_rate(text: str) -> Rate:
    """``"100/s"`` -> ``Rate(100, 1)``; ``InvalidInput`` for anything else."""
    match = _RATE_RE.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise InvalidInput(f"rate {text!r} is not a rate; write COUNT/UNIT: 100/s, 6000/m, 10/h")
    return Rate(float(match.group(1)), _SECONDS[match.group(2)], text.strip())


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"`` (also ``s`` and ``w``) as a ``timedelta``."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise InvalidInput(f"duration {text!r} is not a duration; write e.g. 30d, 12h or 90m")
    return timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])


def hash_key(key: str) -> str:
    """What is stored of a key: the sha256 hex of the whole key string."""
    return hashlib.sha256(key.encode()).hexdigest()


def split_key(key: str) -> str | None:
    """The ``key_id`` of a well-formed key, else None."""
    match = _KEY_RE.fullmatch(key)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known of a key: never the key itself."""

    key_id: str
    name: str
    secret_hash: str
    scope: Scope
    models: tuple[str, ...]
    rate: Rate | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def live(self, now: datetime | None = None) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > (now or datetime.now(UTC))

    def principal(self, address: str | None = None) -> Principal:
        return Principal(f"key:{self.name}", self.scope, self.models, address, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        """For ``keys ls --json`` and the API: everything but the hash."""
        return {
            "name": self.name,
            "key_id": self.key_id,
            "scope": self.scope,
            "models": list(self.models),
            "rate": self.rate.text if self.rate else None,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; what went in was UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _record(row: Row[Any]) -> KeyRecord:
    created = _utc(row.created_at)
    assert created is not None
    return KeyRecord(
        key_id=row.key_id,
        name=row.name,
        secret_hash=row.secret_hash,
        scope=validate_scope(row.scope),
        models=tuple(row.models or ("*",)),
        rate=parse_rate(row.rate) if row.rate else None,
        created_at=created,
        created_by=row.created_by,
        expires_at=_utc(row.expires_at),
        revoked_at=_utc(row.revoked_at),
    )


class KeyStore:
    """The API keys of the registry database ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        name: str,
        scope: str,
        models: Sequence[str] = ("*",),
        expires: timedelta | str | None = None,
        rate: Rate | str | None = None,
        *,
        principal: Principal | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key: its record and the key string, which exists nowhere else afterwards.

        Raises:
            InvalidName, InvalidInput: a bad name, scope, pattern, duration or rate.
            Conflict: a live key already has this name.
        """
        validate_name(name, "key name")
        checked_scope = validate_scope(scope)
        patterns = _patterns(models)
        lifetime = parse_duration(expires) if isinstance(expires, str) else expires
        limit = parse_rate(rate) if isinstance(rate, str) else rate
        who = principal or current()
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = datetime.now(UTC)
        record = KeyRecord(
            key_id=key_id,
            name=name,
            secret_hash=hash_key(key),
            scope=checked_scope,
            models=patterns,
            rate=limit,
            created_at=now,
            created_by=who.name,
            expires_at=now + lifetime if lifetime else None,
            revoked_at=None,
        )
        table = schema.api_keys
        with write_transaction(self.engine) as conn:
            if conn.execute(select(table.c.id).where(table.c.name == name)).first():
                raise Conflict(
                    f"a key named {name!r} exists or existed (names are not reused, so that "
                    "the audit log names one key); choose another name"
                )
            conn.execute(
                insert(table).values(
                    key_id=record.key_id,
                    name=name,
                    secret_hash=record.secret_hash,
                    scope=checked_scope,
                    models=list(patterns),
                    rate=limit.text if limit else None,
                    created_at=now,
                    created_by=who.name,
                    expires_at=record.expires_at,
                )
            )
            detail = {"scope": checked_scope, "models": list(patterns), "key_id": key_id}
            audit.record(conn, "key.create", name, detail=detail, principal=who)
        return record, key

    def revoke(self, name: str, *, principal: Principal | None = None) -> KeyRecord:
        """Revoke the key ``name``: servers refuse it within a second or two.

        Raises:
            NotFound: no key has this name.
            Conflict: it is revoked already.
        """
        table = schema.api_keys
        with write_transaction(self.engine) as conn:
            row = conn.execute(select(table).where(table.c.name == name)).first()
            if row is None:
                raise NotFound(f"no key named {name!r}; modelport keys ls lists them")
            if row.revoked_at is not None:
                raise Conflict(f"key {name!r} is revoked already")
            now = datetime.now(UTC)
            conn.execute(update(table).where(table.c.id == row.id).values(revoked_at=now))
            audit.record(
                conn, "key.revoke", name, detail={"key_id": row.key_id}, principal=principal
            )
        return dataclasses.replace(_record(row), revoked_at=now)

    def get(self, name: str) -> KeyRecord:
        """The key ``name``, revoked or not. Raises ``NotFound``."""
        table = schema.api_keys
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(table).where(table.c.name == name)).first()
        if row is None:
            raise NotFound(f"no key named {name!r}; modelport keys ls lists them")
        return _record(row)

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        """Every key, oldest first; revoked ones only when asked."""
        table = schema.api_keys
        query = select(table).order_by(table.c.id)
        if not include_revoked:
            query = query.where(table.c.revoked_at.is_(None))
        with read_transaction(self.engine) as conn:
            return [_record(row) for row in conn.execute(query)]

    def live_keys(self) -> dict[str, KeyRecord]:
        """Unrevoked, unexpired keys by ``key_id``: what a server accepts."""
        now = datetime.now(UTC)
        return {r.key_id: r for r in self.list() if r.live(now)}

    def authenticate(self, key: str) -> KeyRecord:
        """The record of a valid key. Raises ``Unauthorized`` (``INVALID_KEY``) otherwise."""
        return check_key(key, self._by_key_id)

    def _by_key_id(self, key_id: str) -> KeyRecord | None:
        table = schema.api_keys
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(table).where(table.c.key_id == key_id)).first()
        return _record(row) if row else None


def check_key(key: str, lookup: Any) -> KeyRecord:
    """``key``'s record via ``lookup(key_id) -> KeyRecord | None`` (a dict's ``get`` on the
    server's hot path), if the key is well formed, matches, and is live.

    Raises:
        Unauthorized: ``INVALID_KEY``, whatever the reason.
    """
    key_id = split_key(key)
    found: KeyRecord | None = lookup(key_id) if key_id else None
    if found is None or not hmac.compare_digest(found.secret_hash, hash_key(key)):
        raise Unauthorized(INVALID_KEY)
    if not found.live():
        raise Unauthorized(INVALID_KEY)
    return found


def _patterns(models: Iterable[str]) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in models if p.strip())
    if not patterns:
        raise InvalidInput("a key needs at least one model pattern; '*' grants every model")
    for pattern in patterns:
        if len(pattern) > 128 or any(c in pattern for c in "/\\ \t"):
            raise InvalidInput(
                f"model pattern {pattern!r} is not a name pattern; write e.g. iris or 'iris*'"
            )
    return patterns
