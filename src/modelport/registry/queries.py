"""Reading the metadata DB into records, and resolving model references with helpful errors."""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, func, select

from modelport.errors import NotFound
from modelport.registry import schema
from modelport.registry.records import Lineage, ModelSummary, ModelVersion
from modelport.registry.store.base import FileEntry
from modelport.types import ModelRef, Signature

__all__ = ["list_models", "load_versions", "model_id", "resolve"]


def utc(value: datetime) -> datetime:
    """``value`` in UTC: every time we store is UTC, but SQLite hands it back naive and
    PostgreSQL in the session's time zone."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def model_id(connection: Connection, name: str) -> int:
    """The id of model ``name``; ``NotFound`` with close matches otherwise."""
    found = connection.execute(
        select(schema.models.c.id).where(schema.models.c.name == name)
    ).scalar()
    if found is None:
        names = list(connection.execute(select(schema.models.c.name)).scalars())
        raise NotFound(f"no model named {name!r}{_did_you_mean(name, names)}")
    return int(found)


def resolve(connection: Connection, ref: ModelRef) -> tuple[int, int]:
    """``(model_id, version_id)`` for a reference, or ``NotFound`` saying what exists."""
    mid = model_id(connection, ref.name)
    numbers = dict(
        connection.execute(
            select(schema.versions.c.number, schema.versions.c.id).where(
                schema.versions.c.model_id == mid
            )
        ).all()
    )
    if ref.alias is not None:
        row = connection.execute(
            select(schema.aliases.c.version_id).where(
                schema.aliases.c.model_id == mid, schema.aliases.c.name == ref.alias
            )
        ).scalar()
        if row is None:
            aliases = list(
                connection.execute(
                    select(schema.aliases.c.name).where(schema.aliases.c.model_id == mid)
                ).scalars()
            )
            known = (
                f"; its aliases are {', '.join(sorted(aliases))}" if aliases else "; it has none"
            )
            raise NotFound(
                f"model {ref.name!r} has no alias {ref.alias!r}"
                f"{_did_you_mean(ref.alias, aliases) or known}"
            )
        return mid, int(row)
    if not numbers:
        raise NotFound(f"model {ref.name!r} has no versions")
    if ref.version is None:
        return mid, int(numbers[max(numbers)])
    if ref.version not in numbers:
        raise NotFound(
            f"model {ref.name!r} has no version {ref.version}; "
            f"latest is {max(numbers)} (versions: {_ranges(sorted(numbers))})"
        )
    return mid, int(numbers[ref.version])


def _ranges(numbers: list[int]) -> str:
    if len(numbers) > 8:
        return f"{numbers[0]}…{numbers[-1]}, {len(numbers)} in all"
    return ", ".join(str(n) for n in numbers)


def load_versions(connection: Connection, version_ids: Sequence[int]) -> list[ModelVersion]:
    """Full records for ``version_ids``, in the order given, with a fixed number of queries."""
    if not version_ids:
        return []
    rows = connection.execute(
        select(*schema.versions.c, schema.models.c.name.label("model_name"))
        .join(schema.models, schema.models.c.id == schema.versions.c.model_id)
        .where(schema.versions.c.id.in_(version_ids))
    ).all()
    files: dict[int, list[FileEntry]] = defaultdict(list)
    for vid, path, digest, size in connection.execute(
        select(
            schema.files.c.version_id,
            schema.files.c.path,
            schema.files.c.digest,
            schema.files.c.size,
        ).where(schema.files.c.version_id.in_(version_ids))
    ).all():
        files[vid].append(FileEntry(path, digest, size))
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    for vid, key, value in connection.execute(
        select(schema.tags.c.version_id, schema.tags.c.key, schema.tags.c.value).where(
            schema.tags.c.version_id.in_(version_ids)
        )
    ).all():
        tags[vid][key] = value
    aliases: dict[int, list[str]] = defaultdict(list)
    for vid, name in connection.execute(
        select(schema.aliases.c.version_id, schema.aliases.c.name).where(
            schema.aliases.c.version_id.in_(version_ids)
        )
    ).all():
        aliases[vid].append(name)
    parent_ids = {row.parent_id for row in rows if row.parent_id is not None}
    parents: dict[int, str] = {}
    if parent_ids:
        for vid, number, name in connection.execute(
            select(schema.versions.c.id, schema.versions.c.number, schema.models.c.name)
            .join(schema.models, schema.models.c.id == schema.versions.c.model_id)
            .where(schema.versions.c.id.in_(parent_ids))
        ).all():
            parents[vid] = f"{name}@{number}"
    records = {}
    for version in rows:
        records[version.id] = ModelVersion(
            model=version.model_name,
            version=version.number,
            format=version.format,
            entry=version.entry,
            signature=Signature.from_dict(version.signature),
            size=version.size,
            created_at=utc(version.created_at),
            description=version.description,
            trust_pickle=version.trust_pickle,
            tags=dict(sorted(tags[version.id].items())),
            aliases=tuple(sorted(aliases[version.id])),
            metrics=dict(version.metrics or {}),
            lineage=Lineage(
                parent=parents.get(version.parent_id) if version.parent_id else None,
                operation=version.operation,
                parameters=dict(version.parameters or {}),
            ),
            files=tuple(sorted(files[version.id], key=lambda e: e.path)),
            metadata=dict(version.metadata or {}),
        )
    return [records[vid] for vid in version_ids if vid in records]


def list_models(connection: Connection, name_prefix: str | None = None) -> list[ModelSummary]:
    """Every model with its newest version's facts, sorted by name, in four queries."""
    counts = (
        select(
            schema.versions.c.model_id,
            func.count().label("n"),
            func.max(schema.versions.c.number).label("latest"),
        )
        .group_by(schema.versions.c.model_id)
        .subquery()
    )
    query = (
        select(
            schema.models.c.id,
            schema.models.c.name,
            schema.models.c.description,
            schema.models.c.created_at,
            counts.c.n,
            counts.c.latest,
            schema.versions.c.format,
            schema.versions.c.size,
            schema.versions.c.created_at.label("updated_at"),
        )
        .outerjoin(counts, counts.c.model_id == schema.models.c.id)
        .outerjoin(
            schema.versions,
            (schema.versions.c.model_id == schema.models.c.id)
            & (schema.versions.c.number == counts.c.latest),
        )
        .order_by(schema.models.c.name)
    )
    if name_prefix:
        query = query.where(schema.models.c.name.startswith(name_prefix, autoescape=True))
    aliases: dict[int, dict[str, int]] = defaultdict(dict)
    for mid, alias, number in connection.execute(
        select(schema.aliases.c.model_id, schema.aliases.c.name, schema.versions.c.number).join(
            schema.versions, schema.versions.c.id == schema.aliases.c.version_id
        )
    ).all():
        aliases[mid][alias] = number
    summaries = []
    for row in connection.execute(query).all():
        summaries.append(
            ModelSummary(
                name=row.name,
                description=row.description,
                created_at=utc(row.created_at),
                versions=int(row.n or 0),
                latest=row.latest,
                latest_format=row.format,
                latest_size=row.size,
                updated_at=utc(row.updated_at) if row.updated_at else None,
                aliases=dict(sorted(aliases[row.id].items())),
            )
        )
    return summaries


def version_ids_of(connection: Connection, mid: int) -> list[int]:
    return list(
        connection.execute(
            select(schema.versions.c.id)
            .where(schema.versions.c.model_id == mid)
            .order_by(schema.versions.c.number)
        ).scalars()
    )


def all_manifests(connection: Connection, *, datasets: bool = False) -> dict[int, list[FileEntry]]:
    """Every version's files by version id: of models, or of datasets with ``datasets``."""
    files, versions = (
        (schema.dataset_files, schema.dataset_versions)
        if datasets
        else (schema.files, schema.versions)
    )
    manifests: dict[int, list[FileEntry]] = defaultdict(list)
    for vid, path, digest, size in connection.execute(
        select(files.c.version_id, files.c.path, files.c.digest, files.c.size)
    ).all():
        manifests[vid].append(FileEntry(path, digest, size))
    for vid in connection.execute(select(versions.c.id)).scalars():
        manifests.setdefault(vid, [])
    return manifests
