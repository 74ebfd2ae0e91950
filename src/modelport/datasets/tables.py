"""Dataset rows in the metadata database: resolving references, reading records, writing
versions. Each function runs inside a transaction its caller holds."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from modelport.datasets.records import ColumnSpec, DatasetSummary, DatasetVersion
from modelport.errors import NotFound
from modelport.registry import schema
from modelport.registry.queries import utc
from modelport.registry.store import FileEntry
from modelport.types import ModelRef

__all__ = ["insert_version", "list_datasets", "load_versions", "point_alias", "resolve"]

_D, _V, _F = schema.datasets, schema.dataset_versions, schema.dataset_files
_A, _T = schema.dataset_aliases, schema.dataset_tags


def dataset_id(conn: Connection, name: str) -> int:
    found = conn.execute(select(_D.c.id).where(_D.c.name == name)).scalar()
    if found is None:
        import difflib

        names = list(conn.execute(select(_D.c.name)).scalars())
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise NotFound(
            f"no dataset named {name!r}{hint} (add one with `modelport dataset push` or "
            "`modelport dataset builtin`)"
        )
    return int(found)


def resolve(conn: Connection, ref: ModelRef) -> tuple[int, int]:
    """``(dataset_id, version_id)`` of a reference, or ``NotFound`` saying what exists."""
    did = dataset_id(conn, ref.name)
    numbers = dict(conn.execute(select(_V.c.number, _V.c.id).where(_V.c.dataset_id == did)).all())
    if ref.alias is not None:
        found = conn.execute(
            select(_A.c.version_id).where(_A.c.dataset_id == did, _A.c.name == ref.alias)
        ).scalar()
        if found is None:
            known = sorted(conn.execute(select(_A.c.name).where(_A.c.dataset_id == did)).scalars())
            listed = f"its aliases are {', '.join(known)}" if known else "it has none"
            raise NotFound(f"dataset {ref.name!r} has no alias {ref.alias!r}; {listed}")
        return did, int(found)
    if not numbers:
        raise NotFound(f"dataset {ref.name!r} has no versions")
    if ref.version is None:
        return did, int(numbers[max(numbers)])
    if ref.version not in numbers:
        raise NotFound(
            f"dataset {ref.name!r} has no version {ref.version}; latest is {max(numbers)} "
            f"(versions: {', '.join(map(str, sorted(numbers)))})"
        )
    return did, int(numbers[ref.version])


def version_ids(conn: Connection, did: int) -> list[int]:
    return list(
        conn.execute(select(_V.c.id).where(_V.c.dataset_id == did).order_by(_V.c.number)).scalars()
    )


def load_versions(conn: Connection, ids: Sequence[int]) -> list[DatasetVersion]:
    """Full records of ``ids``, in that order."""
    if not ids:
        return []
    rows = conn.execute(
        select(*_V.c, _D.c.name.label("dataset_name"))
        .join(_D, _D.c.id == _V.c.dataset_id)
        .where(_V.c.id.in_(ids))
    ).all()
    files: dict[int, list[FileEntry]] = defaultdict(list)
    for vid, path, digest, size in conn.execute(
        select(_F.c.version_id, _F.c.path, _F.c.digest, _F.c.size).where(_F.c.version_id.in_(ids))
    ).all():
        files[vid].append(FileEntry(path, digest, size))
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    for vid, key, value in conn.execute(
        select(_T.c.version_id, _T.c.key, _T.c.value).where(_T.c.version_id.in_(ids))
    ).all():
        tags[vid][key] = value
    aliases: dict[int, list[str]] = defaultdict(list)
    for vid, name in conn.execute(
        select(_A.c.version_id, _A.c.name).where(_A.c.version_id.in_(ids))
    ).all():
        aliases[vid].append(name)
    parent_ids = {row.parent_id for row in rows if row.parent_id is not None}
    parents = {
        vid: f"{name}@{number}"
        for vid, number, name in conn.execute(
            select(_V.c.id, _V.c.number, _D.c.name)
            .join(_D, _D.c.id == _V.c.dataset_id)
            .where(_V.c.id.in_(parent_ids))
        ).all()
    }
    records = {
        row.id: DatasetVersion(
            name=row.dataset_name,
            version=row.number,
            format=row.format,
            digest=row.digest,
            rows=row.rows,
            size=row.size,
            label=row.label,
            columns=tuple(ColumnSpec.from_dict(c) for c in row.columns),
            splits=dict(row.splits or {}),
            split_method=dict(row.split_method or {}),
            profile=dict(row.profile or {}),
            source=row.source,
            license=row.license,
            description=row.description,
            created_at=utc(row.created_at),
            tags=dict(sorted(tags[row.id].items())),
            aliases=tuple(sorted(aliases[row.id])),
            derived_from=parents.get(row.parent_id) if row.parent_id else None,
            operation=row.operation,
            parameters=dict(row.parameters or {}),
            files=tuple(sorted(files[row.id], key=lambda e: e.path)),
        )
        for row in rows
    }
    return [records[vid] for vid in ids if vid in records]


def insert_version(
    conn: Connection,
    *,
    name: str,
    row: dict[str, Any],
    parent: int | None,
    entries: Sequence[FileEntry],
    tags: dict[str, str],
    aliases: Sequence[str],
) -> int:
    """Record the next version of ``name`` (created if new); returns its number."""
    now = datetime.now(UTC)
    did = conn.execute(select(_D.c.id).where(_D.c.name == name)).scalar()
    if did is None:
        did = conn.execute(
            insert(_D)
            .values(name=name, description=row["description"], created_at=now, last_version=0)
            .returning(_D.c.id)
        ).scalar_one()
    # Numbers are never reused: the dataset row keeps the last one even when versions go.
    conn.execute(update(_D).where(_D.c.id == did).values(last_version=_D.c.last_version + 1))
    number = int(conn.execute(select(_D.c.last_version).where(_D.c.id == did)).scalar_one())
    vid = conn.execute(
        insert(_V)
        .values(dataset_id=did, number=number, created_at=now, parent_id=parent, **row)
        .returning(_V.c.id)
    ).scalar_one()
    conn.execute(
        insert(_F),
        [{"version_id": vid, "path": e.path, "digest": e.digest, "size": e.size} for e in entries],
    )
    if tags:
        conn.execute(
            insert(_T), [{"version_id": vid, "key": k, "value": v} for k, v in tags.items()]
        )
    for alias in aliases:
        point_alias(conn, int(did), alias, int(vid))
    return number


def point_alias(conn: Connection, did: int, alias: str, vid: int) -> None:
    conn.execute(delete(_A).where(_A.c.dataset_id == did, _A.c.name == alias))
    conn.execute(insert(_A).values(dataset_id=did, name=alias, version_id=vid))


def delete_version(conn: Connection, vid: int) -> None:
    conn.execute(delete(_A).where(_A.c.version_id == vid))
    conn.execute(delete(_V).where(_V.c.id == vid))


def list_datasets(conn: Connection) -> list[DatasetSummary]:
    """Every dataset with its newest version's facts, sorted by name."""
    counts = (
        select(_V.c.dataset_id, func.count().label("n"), func.max(_V.c.number).label("latest"))
        .group_by(_V.c.dataset_id)
        .subquery()
    )
    query = (
        select(
            _D.c.id,
            _D.c.name,
            _D.c.description,
            counts.c.n,
            counts.c.latest,
            _V.c.rows,
            _V.c.size,
            _V.c.format,
            _V.c.created_at,
        )
        .outerjoin(counts, counts.c.dataset_id == _D.c.id)
        .outerjoin(_V, (_V.c.dataset_id == _D.c.id) & (_V.c.number == counts.c.latest))
        .order_by(_D.c.name)
    )
    aliases: dict[int, dict[str, int]] = defaultdict(dict)
    for did, alias, number in conn.execute(
        select(_A.c.dataset_id, _A.c.name, _V.c.number).join(_V, _V.c.id == _A.c.version_id)
    ).all():
        aliases[did][alias] = number
    return [
        DatasetSummary(
            name=row.name,
            description=row.description,
            versions=int(row.n or 0),
            latest=row.latest,
            rows=row.rows,
            size=row.size,
            format=row.format,
            updated_at=utc(row.created_at) if row.created_at else None,
            aliases=dict(sorted(aliases[row.id].items())),
        )
        for row in conn.execute(query).all()
    ]
