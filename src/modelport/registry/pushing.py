"""Recording a pushed version: the one transaction that numbers it, writes its rows (files,
tags, aliases) and its audit entry, after its files were published to the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from modelport.registry import editing, queries, schema
from modelport.registry.db import write_transaction
from modelport.registry.store import FileEntry, manifest_key
from modelport.security import audit
from modelport.types import ModelRef

__all__ = ["insert_version"]


def insert_version(
    engine: Engine,
    *,
    name: str,
    row: dict[str, Any],
    parent: str | None,
    entries: list[FileEntry],
    tags: dict[str, str],
    aliases: list[str],
) -> int:
    """Record the next version of ``name`` (created when new) and return its number.

    Raises:
        NotFound: the lineage ``parent`` does not exist. StorageError: the database refused.
    """
    now = datetime.now(UTC)
    with write_transaction(engine) as conn:
        mid = _ensure_model(conn, name, row["description"], now)
        conn.execute(
            update(schema.models)
            .where(schema.models.c.id == mid)
            .values(last_version=schema.models.c.last_version + 1)
        )
        number = int(
            conn.execute(
                select(schema.models.c.last_version).where(schema.models.c.id == mid)
            ).scalar_one()
        )
        parent_id = queries.resolve(conn, ModelRef.parse(parent))[1] if parent else None
        vid = conn.execute(
            insert(schema.versions)
            .values(model_id=mid, number=number, created_at=now, parent_id=parent_id, **row)
            .returning(schema.versions.c.id)
        ).scalar_one()
        if entries:
            conn.execute(
                insert(schema.files),
                [
                    {"version_id": vid, "path": e.path, "digest": e.digest, "size": e.size}
                    for e in entries
                ],
            )
        if tags:
            conn.execute(
                insert(schema.tags),
                [{"version_id": vid, "key": k, "value": v} for k, v in tags.items()],
            )
        for alias in aliases:
            editing.point_alias(conn, mid, alias, vid)
        audit.record(
            conn,
            "push",
            f"{name}@{number}",
            detail={
                "format": row["format"],
                "size": row["size"],
                "files": len(entries),
                # One digest names every file's path and content (``manifest_key``): an
                # entry stays small however many files a model has.
                "manifest": manifest_key(entries),
                "aliases": aliases,
                "tags": tags,
                "parent": parent,
            },
        )
        return number


def _ensure_model(conn: Connection, name: str, description: str, now: datetime) -> int:
    found = conn.execute(
        select(schema.models.c.id, schema.models.c.description).where(schema.models.c.name == name)
    ).first()
    if found is None:
        # A name deleted before goes on from its last number (see ``Registry.delete_model``).
        retired = schema.retired_models
        last = conn.execute(select(retired.c.last_version).where(retired.c.name == name)).scalar()
        conn.execute(delete(retired).where(retired.c.name == name))
        return int(
            conn.execute(
                insert(schema.models)
                .values(name=name, description=description, created_at=now, last_version=last or 0)
                .returning(schema.models.c.id)
            ).scalar_one()
        )
    if description and not found.description:
        conn.execute(
            update(schema.models)
            .where(schema.models.c.id == found.id)
            .values(description=description)
        )
    return int(found.id)
