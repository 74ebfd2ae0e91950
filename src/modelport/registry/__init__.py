"""The model registry: versioned metadata in SQL, files in a content-addressed store."""

from modelport.registry.records import Lineage, ModelSummary, ModelVersion
from modelport.registry.registry import Registry
from modelport.registry.store.base import FileEntry, GcReport

__all__ = ["FileEntry", "GcReport", "Lineage", "ModelSummary", "ModelVersion", "Registry"]
