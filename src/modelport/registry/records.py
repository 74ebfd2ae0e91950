"""What the registry hands back: plain, immutable records of models and versions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelport.registry.store.base import FileEntry
from modelport.types import Signature

__all__ = ["SERVING_KEY", "Lineage", "ModelSummary", "ModelVersion"]

SERVING_KEY = "serving"
"""The key of ``ModelVersion.metadata`` holding the serving settings ``modelport tune`` chose."""


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a version came from: its parent version, the operation, and its parameters."""

    parent: str | None = None
    operation: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent, "operation": self.operation, "parameters": self.parameters}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lineage:
        return cls(data.get("parent"), data.get("operation"), dict(data.get("parameters") or {}))


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One immutable version of a model, with everything recorded about it."""

    model: str
    version: int
    format: str
    entry: str
    signature: Signature
    size: int
    created_at: datetime
    description: str
    trust_pickle: bool
    tags: dict[str, str]
    aliases: tuple[str, ...]
    metrics: dict[str, Any]
    lineage: Lineage
    files: tuple[FileEntry, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the format's runtime recorded at push (opset, producer, task, ...), and the
    serving settings stored on the version (under ``SERVING_KEY``)."""

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"

    @property
    def serving_settings(self) -> dict[str, Any]:
        """Serving settings stored on this version (``modelport tune``); empty if none."""
        stored = self.metadata.get(SERVING_KEY)
        return dict(stored) if isinstance(stored, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "ref": self.ref,
            "format": self.format,
            "entry": self.entry,
            "size": self.size,
            "created_at": self.created_at.isoformat(),
            "description": self.description,
            "trust_pickle": self.trust_pickle,
            "tags": self.tags,
            "aliases": list(self.aliases),
            "metrics": self.metrics,
            "lineage": self.lineage.to_dict(),
            "signature": self.signature.to_dict(),
            "metadata": self.metadata,
            "files": [{"path": f.path, "sha256": f.digest, "size": f.size} for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelVersion:
        """The record ``to_dict`` made (what the registry API answers)."""
        return cls(
            model=data["model"],
            version=int(data["version"]),
            format=data["format"],
            entry=data["entry"],
            signature=Signature.from_dict(data["signature"]),
            size=int(data["size"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            description=data["description"],
            trust_pickle=bool(data["trust_pickle"]),
            tags=dict(data["tags"]),
            aliases=tuple(data["aliases"]),
            metrics=dict(data["metrics"]),
            lineage=Lineage.from_dict(data["lineage"]),
            files=tuple(FileEntry(f["path"], f["sha256"], int(f["size"])) for f in data["files"]),
            metadata=dict(data.get("metadata") or {}),
        )


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A model and its newest version, as ``modelport ls`` lists it."""

    name: str
    description: str
    created_at: datetime
    versions: int
    latest: int | None
    latest_format: str | None
    latest_size: int | None
    updated_at: datetime | None
    aliases: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "versions": self.versions,
            "latest": self.latest,
            "format": self.latest_format,
            "size": self.latest_size,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "aliases": self.aliases,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSummary:
        """The record ``to_dict`` made (what the registry API answers)."""
        updated = data.get("updated_at")
        return cls(
            name=data["name"],
            description=data["description"],
            created_at=datetime.fromisoformat(data["created_at"]),
            versions=int(data["versions"]),
            latest=data.get("latest"),
            latest_format=data.get("format"),
            latest_size=data.get("size"),
            updated_at=datetime.fromisoformat(updated) if updated else None,
            aliases={k: int(v) for k, v in data["aliases"].items()},
        )
