"""Edits to what a version says about itself: aliases (with compare-and-set), tags,
descriptions, metrics, serving settings. Each is one function on a write transaction's
connection; ``Registry`` opens the transaction and reads the result back. Each records its
audit entry in that transaction, so the change and its entry commit (or vanish) together."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from modelport.errors import Conflict, InvalidInput
from modelport.registry import queries, schema
from modelport.registry.records import SERVING_KEY
from modelport.security import audit
from modelport.types import ModelRef, parse_tags, validate_alias, validate_name

__all__ = [
    "delete_alias",
    "json_dict",
    "point_alias",
    "set_alias",
    "set_description",
    "set_metrics",
    "set_serving_settings",
    "set_tags",
    "tag_map",
    "version_number",
]


def set_alias(
    conn: Connection, target: ModelRef, alias: str, expected_version: int | None = None
) -> None:
    """Point ``alias`` at the version ``target`` names.

    ``expected_version`` makes the move a compare-and-set: the alias must point at that
    version number now (0: the alias must not exist yet), or ``Conflict`` says where it
    points, so two deployers never overwrite each other silently.
    """
    validate_alias(alias)
    mid, vid = queries.resolve(conn, target)
    now = conn.execute(
        select(schema.versions.c.number)
        .join(schema.aliases, schema.aliases.c.version_id == schema.versions.c.id)
        .where(schema.aliases.c.model_id == mid, schema.aliases.c.name == alias)
    ).scalar()
    if expected_version is not None and (now or 0) != expected_version:
        where = f"points at {target.name}@{now}" if now else "does not exist"
        wanted = f"@{expected_version}" if expected_version else "no alias"
        raise Conflict(
            f"alias {alias!r} of {target.name!r} {where}, not {wanted} as expected; "
            "someone else moved it: look again (modelport show) and retry"
        )
    point_alias(conn, mid, alias, vid)
    to = version_number(conn, vid)
    audit.record(
        conn,
        "alias.set",
        f"{target.name}@{alias}",
        detail={"alias": alias, "from": now, "to": to, "expected": expected_version},
    )


def point_alias(conn: Connection, model_id: int, alias: str, version_id: int) -> None:
    conn.execute(
        delete(schema.aliases).where(
            schema.aliases.c.model_id == model_id, schema.aliases.c.name == alias
        )
    )
    conn.execute(
        insert(schema.aliases).values(model_id=model_id, name=alias, version_id=version_id)
    )


def delete_alias(conn: Connection, name: str, alias: str) -> None:
    """Remove an alias; ``NotFound`` if the model does not have it."""
    mid, vid = queries.resolve(conn, ModelRef(validate_name(name), alias=validate_alias(alias)))
    conn.execute(
        delete(schema.aliases).where(
            schema.aliases.c.model_id == mid, schema.aliases.c.name == alias
        )
    )
    was = version_number(conn, vid)
    audit.record(conn, "alias.delete", f"{name}@{alias}", detail={"alias": alias, "was": was})


def set_tags(
    conn: Connection,
    target: ModelRef,
    tags: Mapping[str, str] | Iterable[str] | None,
    remove: Iterable[str] = (),
) -> None:
    """Add or replace ``tags`` on the version, and remove the keys in ``remove``."""
    _, vid = queries.resolve(conn, target)
    new = tag_map(tags)
    gone = set(remove) | set(new)
    before = dict(
        conn.execute(
            select(schema.tags.c.key, schema.tags.c.value).where(schema.tags.c.version_id == vid)
        ).all()
    )
    if gone:
        conn.execute(
            delete(schema.tags).where(schema.tags.c.version_id == vid, schema.tags.c.key.in_(gone))
        )
    if new:
        conn.execute(
            insert(schema.tags),
            [{"version_id": vid, "key": k, "value": v} for k, v in new.items()],
        )
    removed = sorted(k for k in set(remove) - set(new) if k in before)
    changed = {k: v for k, v in new.items() if before.get(k) != v}
    audit.record(
        conn,
        "tags.set",
        f"{target.name}@{version_number(conn, vid)}",
        detail={"set": changed, "removed": removed, "before": {k: before[k] for k in removed}},
    )


def set_description(conn: Connection, target: ModelRef, description: str) -> None:
    """The version's description, or the model's when ``target`` names neither version nor
    alias."""
    if target.version is None and target.alias is None:
        mid = queries.model_id(conn, target.name)
        conn.execute(
            update(schema.models).where(schema.models.c.id == mid).values(description=description)
        )
        audit.record(conn, "description.set", target.name, detail={"description": description})
        return
    _, vid = queries.resolve(conn, target)
    conn.execute(
        update(schema.versions).where(schema.versions.c.id == vid).values(description=description)
    )
    audit.record(
        conn,
        "description.set",
        f"{target.name}@{version_number(conn, vid)}",
        detail={"description": description},
    )


def set_metrics(conn: Connection, target: ModelRef, metrics: Mapping[str, Any]) -> None:
    """Merge ``metrics`` into the version's metrics."""
    new = json_dict(metrics, "metrics")
    _, vid = queries.resolve(conn, target)
    current = conn.execute(
        select(schema.versions.c.metrics).where(schema.versions.c.id == vid)
    ).scalar_one()
    conn.execute(
        update(schema.versions)
        .where(schema.versions.c.id == vid)
        .values(metrics={**current, **new})
    )
    ref = f"{target.name}@{version_number(conn, vid)}"
    audit.record(conn, "metrics.set", ref, detail={"metrics": new})


def set_serving_settings(
    conn: Connection, target: ModelRef, settings: Mapping[str, Any] | None
) -> None:
    """Store (or with None remove) the serving settings in the version's metadata."""
    new = None if settings is None else json_dict(settings, "serving settings")
    _, vid = queries.resolve(conn, target)
    row = schema.versions.c.id == vid
    stored = conn.execute(select(schema.versions.c.metadata).where(row)).scalar_one()
    metadata = {key: value for key, value in stored.items() if key != SERVING_KEY}
    if new:
        metadata[SERVING_KEY] = new
    conn.execute(update(schema.versions).where(row).values(metadata=metadata))
    ref = f"{target.name}@{version_number(conn, vid)}"
    audit.record(conn, "serving.set", ref, detail={"serving": new})


def version_number(conn: Connection, version_id: int) -> int:
    """The number of the version whose row id is ``version_id``."""
    number = conn.execute(
        select(schema.versions.c.number).where(schema.versions.c.id == version_id)
    ).scalar_one()
    return int(number)


def tag_map(tags: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if isinstance(tags, Mapping):
        return parse_tags(f"{k}={v}" for k, v in tags.items())
    return parse_tags(tags)


def json_dict(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        return dict(json.loads(json.dumps(dict(value))))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable: {exc}") from exc
