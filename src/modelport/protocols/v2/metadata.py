"""Open Inference Protocol descriptions of a server and its models, as typed records.

One description, two encodings: the REST front-end writes ``to_json()``, the gRPC one builds
its message from the same dict, and the client reads either back with ``from_json()`` into
the same records (a gRPC message is turned into that dict first, ``messages.as_dict``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelport.errors import InvalidInput
from modelport.types import DataType, Signature, TensorSpec

__all__ = [
    "EXTENSIONS",
    "ModelMetadata",
    "RepositoryEntry",
    "ServerMetadata",
    "spec_from_json",
    "spec_to_json",
]

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def spec_to_json(spec: TensorSpec) -> dict[str, Any]:
    """A tensor's V2 metadata; an unknown rank is written ``[-1]``, as Triton does."""
    return {
        "name": spec.name,
        "datatype": spec.datatype.value,
        "shape": list(spec.shape) if spec.shape is not None else [-1],
    }


def spec_from_json(data: Any) -> TensorSpec:
    """A ``TensorSpec`` from V2 tensor metadata. Raises ``InvalidInput`` when malformed."""
    try:
        return TensorSpec(
            name=str(data["name"]),
            datatype=DataType.parse(str(data["datatype"])),
            shape=tuple(int(d) for d in data["shape"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"malformed tensor metadata {str(data)[:120]}: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """``GET /v2`` / ``ServerMetadata``: who answers and which extensions it speaks."""

    name: str
    version: str
    extensions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerMetadata:
        return cls(
            name=str(data.get("name", "")),
            version=str(data.get("version", "")),
            extensions=tuple(str(e) for e in data.get("extensions", ())),
        )


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """``GET /v2/models/NAME[/versions/N]`` / ``ModelMetadata``: a model's signature.

    ``versions`` are the versions the server serves of the model (as strings, the wire's
    type); ``platform`` is Triton's name for the format where there is one.
    """

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def signature(self) -> Signature:
        return Signature(inputs=self.inputs, outputs=self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [spec_to_json(s) for s in self.inputs],
            "outputs": [spec_to_json(s) for s in self.outputs],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        return cls(
            name=str(data.get("name", "")),
            versions=tuple(str(v) for v in data.get("versions", ())),
            platform=str(data.get("platform", "")),
            inputs=tuple(spec_from_json(s) for s in data.get("inputs", ())),
            outputs=tuple(spec_from_json(s) for s in data.get("outputs", ())),
        )


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One row of the repository index: a served model version and its state."""

    name: str
    version: str
    state: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RepositoryEntry:
        return cls(
            name=str(data.get("name", "")),
            version=str(data.get("version", "")),
            state=str(data.get("state", "")),
            reason=str(data.get("reason", "") or ""),
        )
