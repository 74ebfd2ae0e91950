"""What the registry hands back: plain, immutable records of models and versions."""

from __future__ import annotations

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
