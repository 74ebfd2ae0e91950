"""The records a client builds from several answers."""

from __future__ import annotations

from collections.abc import Sequence

from modelport.client.base import ModelInfo
from modelport.protocols.v2.metadata import ModelMetadata, RepositoryEntry

__all__ = ["model_infos"]


def model_infos(
    entries: Sequence[RepositoryEntry], metadata: Sequence[ModelMetadata]
) -> list[ModelInfo]:
    """One ``ModelInfo`` per model: its states from the repository index, its versions and
    signature from its metadata (``metadata`` in the order of the names' first entries)."""
    infos = []
    for meta in metadata:
        states = {e.version: e.state for e in entries if e.name == meta.name}
        versions = meta.versions or tuple(states)
        infos.append(ModelInfo(meta.name, versions, states, meta.inputs, meta.outputs))
    return infos
