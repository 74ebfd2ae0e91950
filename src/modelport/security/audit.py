"""The audit log: an append-only table in the registry database whose entries form a hash
chain, so that an edited or deleted entry is detected (``modelport audit verify``).

Each entry's ``hash`` is the sha256 of its ``prev_hash`` and its own fields in a canonical
JSON form; the first entry's ``prev_hash`` is ``GENESIS``. Appends run inside the registry's
write transaction (serialised on SQLite and PostgreSQL alike), so two writers never fork the
chain. ``record`` joins a transaction the caller holds (a push and its entry commit
together); ``AuditLog.append`` makes its own.

``AuditLog.verify`` walks the chain from ``GENESIS``: an entry whose fields no longer give its
hash was edited; an entry whose ``prev_hash`` is not the hash of the entry before it follows a
deleted, inserted or moved entry. Deleting the newest entries leaves a shorter chain that is
still valid, so that is caught only against an anchor kept elsewhere: the head hash that
``verify`` reports, passed back later as ``expect_head``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, or_, select

from modelport.errors import InvalidInput
from modelport.registry import schema
from modelport.registry.db import read_transaction, write_transaction
from modelport.security.principal import Principal, current

__all__ = [
    "ACTIONS",
    "GENESIS",
    "AuditCheck",
    "AuditEntry",
    "AuditLog",
    "entry_hash",
    "parse_since",
    "record",
]

GENESIS = "0" * 64

ACTIONS = (
    "push",
    "alias.set",
    "alias.delete",
    "tags.set",
    "description.set",
    "metrics.set",
    "serving.set",
    "version.delete",
    "model.delete",
    "gc",
    "key.create",
    "key.revoke",
    "model.load",
    "model.unload",
    "request.denied",
    "dataset.push",
    "dataset.split",
    "dataset.delete",
    "dataset.alias",
    "encryption.rotate",
)
"""Every action modelport records (docs/audit.md explains each)."""

_SPAN = re.compile(r"(\d+)\s*([smhdw])")
_SPAN_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_BATCH = 1000  # rows per fetch while verifying: a long log is never held in memory at once


@dataclass(frozen=True)
class AuditEntry:
    """One thing that happened: who (``actor``), what (``action`` on ``target``), when,
    from where (``address``), and how it ended (``outcome``: ``ok``, ``denied``, ``failed``)."""

    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    address: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None
    prev_hash: str = GENESIS
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "address": self.address,
            "detail": dict(self.detail),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """The chain hash of ``entry`` after an entry whose hash is ``prev_hash``."""
    at = entry.at if entry.at.tzinfo else entry.at.replace(tzinfo=UTC)
    canonical = json.dumps(
        [
            prev_hash,
            at.astimezone(UTC).isoformat(timespec="microseconds"),
            entry.actor,
            entry.action,
            entry.target,
            entry.outcome,
            entry.address,
            entry.detail,
        ],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """The moment ``text`` names: a span back from ``now`` (``30m``, ``1h``, ``2d``, ``1w``)
    or an ISO date or time (``2026-12-01``, ``2026-12-01T10:00:00+01:00``; UTC when it has
    no zone).

    Raises:
        InvalidInput: neither a span nor an ISO date/time.
    """
    span = _SPAN.fullmatch(text.strip())
    if span is not None:
        back = timedelta(**{_SPAN_UNITS[span[2]]: int(span[1])})
        return (now or datetime.now(UTC)) - back
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"cannot read {text!r} as a time: give a span back from now (30m, 1h, 2d, 1w) or "
            "an ISO date or time (2026-12-01, 2026-12-01T10:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def record(
    conn: Connection,
    action: str,
    target: str = "",
    *,
    outcome: str = "ok",
    detail: Mapping[str, Any] | None = None,
    principal: Principal | None = None,
) -> AuditEntry:
    """Append one entry inside the write transaction ``conn`` (see ``write_transaction``);
    ``principal`` defaults to who is acting now (``principal.current``). ``detail`` is
    stored as JSON (values JSON cannot hold, such as datetimes, as their text)."""
    who = principal or current()
    # Hash exactly what the database will hand back: JSON's own types, string keys.
    stored = json.loads(json.dumps(dict(detail or {}), default=str))
    entry = AuditEntry(
        at=datetime.now(UTC),
        actor=who.name,
        action=action,
        target=target,
        outcome=outcome,
        address=who.address,
        detail=stored,
    )
    table = schema.audit_log
    last = conn.execute(select(table.c.hash).order_by(table.c.id.desc()).limit(1)).scalar()
    prev = last or GENESIS
    digest = entry_hash(prev, entry)
    new_id = conn.execute(
        insert(table).values(
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            address=entry.address,
            outcome=entry.outcome,
            detail=dict(entry.detail),
            prev_hash=prev,
            hash=digest,
        )
    ).inserted_primary_key
    return dataclasses.replace(entry, id=new_id[0] if new_id else None, prev_hash=prev, hash=digest)


class AuditLog:
    """The audit log of the registry database ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(
        self,
        action: str,
        target: str = "",
        *,
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
        principal: Principal | None = None,
    ) -> AuditEntry:
        """Append one entry in a transaction of its own."""
        with write_transaction(self.engine) as conn:
            return record(conn, action, target, outcome=outcome, detail=detail, principal=principal)

    def entries(
        self,
        *,
        since: datetime | None = None,
        model: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries oldest first, filtered: at or after ``since``; on the model (or dataset)
        named ``model`` (target ``iris``, ``iris@3``, ``iris@prod``); by ``actor``
        (``key:ci``); ``action`` exactly, or a family with a trailing dot (``dataset.``).
        ``limit`` keeps the newest ``limit`` of them."""
        table = schema.audit_log
        query = select(table)
        if since is not None:
            aware = since if since.tzinfo else since.replace(tzinfo=UTC)
            query = query.where(table.c.at >= aware.astimezone(UTC))
        if model is not None:
            query = query.where(
                or_(
                    table.c.target == model, table.c.target.startswith(f"{model}@", autoescape=True)
                )
            )
        if actor is not None:
            query = query.where(table.c.actor == actor)
        if action is not None:
            query = query.where(
                table.c.action.startswith(action, autoescape=True)
                if action.endswith(".")
                else table.c.action == action
            )
        query = query.order_by(table.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query).all()
        return [_entry(row) for row in reversed(rows)]

    def verify(self, *, expect_head: str | None = None) -> AuditCheck:
        """Walk the whole chain; the first entry found edited or out of place makes it fail.

        ``expect_head`` is a hash an earlier ``verify`` reported as the head: it must still
        be in the chain, or the newest entries (at least) were deleted. A log that has grown
        since passes, as long as the anchor is still there.
        """
        checked, previous, anchored = 0, GENESIS, expect_head is None
        previous_id: int | None = None
        for row in self._rows():
            entry = _entry(row)
            if entry.prev_hash != previous:
                after = f"entry {previous_id}" if previous_id else "the start"
                return AuditCheck(
                    False, checked, previous, entry.id,
                    f"audit entry {entry.id} does not follow {after} of the chain: an entry "
                    "before it was deleted, inserted or moved (or rewritten with a new hash)",
                )  # fmt: skip
            if entry_hash(entry.prev_hash, entry) != entry.hash:
                return AuditCheck(
                    False, checked, previous, entry.id,
                    f"audit entry {entry.id} was edited: its fields no longer give its hash",
                )  # fmt: skip
            previous, previous_id = entry.hash, entry.id
            checked += 1
            anchored = anchored or entry.hash == expect_head
        if not anchored:
            return AuditCheck(
                False, checked, previous, None,
                f"no audit entry has the expected head hash {expect_head}: the newest entries "
                "were deleted (or the hash is from another registry)",
            )  # fmt: skip
        return AuditCheck(True, checked, previous)

    def _rows(self) -> Iterator[Row[Any]]:
        table = schema.audit_log
        last_id = 0
        while True:
            with read_transaction(self.engine) as conn:
                rows = conn.execute(
                    select(table).where(table.c.id > last_id).order_by(table.c.id).limit(_BATCH)
                ).all()
            yield from rows
            if len(rows) < _BATCH:
                return
            last_id = rows[-1].id


@dataclass(frozen=True)
class AuditCheck:
    """What ``AuditLog.verify`` found: ``ok``, how many entries it ``checked`` (in chain
    order, up to the first bad one), the ``head`` hash (of the last good entry; ``GENESIS``
    for an empty log), and, when not ok, the first ``bad_id`` and the ``problem``."""

    ok: bool
    checked: int
    head: str
    bad_id: int | None = None
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _entry(row: Row[Any]) -> AuditEntry:
    # SQLite hands datetimes back without their zone; every one was written in UTC.
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    return AuditEntry(
        at=at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        address=row.address,
        detail=row.detail or {},
        id=row.id,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
