"""The audit log: an append-only table in the registry database whose entries form a hash
chain, so that an edited or deleted entry is detected (``modelport audit verify``).

Each entry's ``hash`` is the sha256 of its ``prev_hash`` and its own fields in a canonical
JSON form; the first entry's ``prev_hash`` is ``GENESIS``. Appends run inside the registry's
write transaction (serialised on SQLite and PostgreSQL alike), so two writers never fork the
chain. ``record`` joins a transaction the caller holds (a push and its entry commit
together); ``AuditLog.append`` makes its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from modelport.registry import schema
from modelport.registry.db import write_transaction
from modelport.security.principal import Principal, current

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "entry_hash", "record"]

GENESIS = "0" * 64


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
    ``principal`` defaults to who is acting now (``principal.current``)."""
    who = principal or current()
    entry = AuditEntry(
        at=datetime.now(UTC),
        actor=who.name,
        action=action,
        target=target,
        outcome=outcome,
        address=who.address,
        detail=dict(detail or {}),
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
