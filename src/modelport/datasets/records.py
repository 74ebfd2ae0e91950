"""What the dataset catalog hands back: references, column specs and version records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelport.errors import InvalidName
from modelport.registry.store import FileEntry
from modelport.types import DataType, ModelRef, validate_name

__all__ = ["ColumnSpec", "DatasetRef", "DatasetSummary", "DatasetVersion"]


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """``name``, ``name@3``, ``name@alias``, each optionally with ``:split`` (``digits@2:val``).

    The part before ``:`` follows the model reference grammar (``ModelRef``).
    """

    ref: ModelRef
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        base, sep, split = text.partition(":")
        if sep:
            if not split:
                raise InvalidName(
                    f"dataset reference {text!r} has nothing after ':'; name a split, e.g. "
                    f"{base}:train"
                )
            validate_name(split, "split name")
        return cls(ModelRef.parse(base), split or None)

    @classmethod
    def coerce(cls, ref: DatasetRef | ModelRef | str) -> DatasetRef:
        if isinstance(ref, ModelRef):
            return cls(ref)
        return ref if isinstance(ref, DatasetRef) else cls.parse(ref)

    @property
    def name(self) -> str:
        return self.ref.name

    def __str__(self) -> str:
        return f"{self.ref}:{self.split}" if self.split else str(self.ref)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column (or tensor) of a dataset: ``shape`` is the shape of one row's value,
    ``[]`` for a scalar column, ``[8, 8]`` for an 8x8 image."""

    name: str
    datatype: DataType
    shape: tuple[int, ...] = ()

    @property
    def elements(self) -> int:
        """Values per row."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype.value, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnSpec:
        return cls(data["name"], DataType(data["datatype"]), tuple(data["shape"]))


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """One immutable version of a dataset, with everything recorded about it.

    ``digest`` is the sha256 identity of the whole content (every stored byte, split index
    arrays included). ``splits`` maps each named split to its row count (empty when the
    version is not split); ``split_method`` says how they were drawn (method, seed,
    fractions, stratify). ``profile`` maps each column to its statistics.
    """

    name: str
    version: int
    format: str
    digest: str
    rows: int
    size: int
    label: str | None
    columns: tuple[ColumnSpec, ...]
    splits: dict[str, int]
    split_method: dict[str, Any]
    profile: dict[str, Any]
    source: str
    license: str
    description: str
    created_at: datetime
    tags: dict[str, str]
    aliases: tuple[str, ...]
    derived_from: str | None
    operation: str | None
    parameters: dict[str, Any]
    files: tuple[FileEntry, ...] = field(default=())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def column(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "format": self.format,
            "sha256": self.digest,
            "rows": self.rows,
            "size": self.size,
            "label": self.label,
            "columns": [c.to_dict() for c in self.columns],
            "splits": self.splits,
            "split_method": self.split_method,
            "profile": self.profile,
            "source": self.source,
            "license": self.license,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "tags": self.tags,
            "aliases": list(self.aliases),
            "lineage": {
                "derived_from": self.derived_from,
                "operation": self.operation,
                "parameters": self.parameters,
            },
            "files": [{"path": f.path, "sha256": f.digest, "size": f.size} for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetVersion:
        """The record ``to_dict`` made (what the registry API answers)."""
        lineage = data["lineage"]
        return cls(
            name=data["name"],
            version=int(data["version"]),
            format=data["format"],
            digest=data["sha256"],
            rows=int(data["rows"]),
            size=int(data["size"]),
            label=data["label"],
            columns=tuple(ColumnSpec.from_dict(c) for c in data["columns"]),
            splits=dict(data["splits"]),
            split_method=dict(data["split_method"]),
            profile=dict(data["profile"]),
            source=data["source"],
            license=data["license"],
            description=data["description"],
            created_at=datetime.fromisoformat(data["created_at"]),
            tags=dict(data["tags"]),
            aliases=tuple(data["aliases"]),
            derived_from=lineage["derived_from"],
            operation=lineage["operation"],
            parameters=dict(lineage["parameters"]),
            files=tuple(FileEntry(f["path"], f["sha256"], int(f["size"])) for f in data["files"]),
        )


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """A dataset in a listing: its newest version's facts and its aliases."""

    name: str
    description: str
    versions: int
    latest: int | None
    rows: int | None
    size: int | None
    format: str | None
    updated_at: datetime | None
    aliases: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "versions": self.versions,
            "latest": self.latest,
            "rows": self.rows,
            "size": self.size,
            "format": self.format,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "aliases": self.aliases,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSummary:
        """The record ``to_dict`` made (what the registry API answers)."""
        updated = data.get("updated_at")
        return cls(
            name=data["name"],
            description=data["description"],
            versions=int(data["versions"]),
            latest=data.get("latest"),
            rows=data.get("rows"),
            size=data.get("size"),
            format=data.get("format"),
            updated_at=datetime.fromisoformat(updated) if updated else None,
            aliases={k: int(v) for k, v in data["aliases"].items()},
        )
