"""Core types carried by every arrow of the model flow: datatypes, tensor specs, signatures,
model references. Depends on numpy only, and imports it on first use: commands that only
read the registry (``modelport ls``) start ~0.1 s faster without it."""

from __future__ import annotations

import enum
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias

from modelport.errors import InvalidInput, InvalidName

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DataType",
    "ModelRef",
    "Signature",
    "TensorSpec",
    "Tensors",
    "validate_name",
]

Tensors: TypeAlias = "dict[str, npt.NDArray[Any]]"
"""What runtimes take and give: tensor name -> numpy array."""


class DataType(enum.StrEnum):
    """Open Inference Protocol datatype names, with their numpy mapping."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy(self) -> np.dtype[Any]:
        """The numpy dtype that holds this datatype (BYTES is held as ``object`` of bytes)."""
        return _to_numpy()[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element in the raw (binary) wire encoding; 0 for variable-size BYTES."""
        return 0 if self is DataType.BYTES else _to_numpy()[self].itemsize

    @classmethod
    def parse(cls, name: str) -> DataType:
        """Parse a datatype name, raising ``InvalidInput`` that lists the valid ones."""
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(member.value for member in cls)
            raise InvalidInput(f"unknown datatype {name!r}; expected one of {valid}") from None

    @classmethod
    def from_numpy(cls, dtype: npt.DTypeLike) -> DataType:
        """The datatype for a numpy dtype; strings and objects map to BYTES."""
        # Fast path for the common case, an ``array.dtype``: every response encodes its
        # outputs' datatypes through here.
        found = _from_numpy().get(dtype) if isinstance(dtype, Hashable) else None  # type: ignore[arg-type]
        if found is not None:
            return found
        import numpy as np

        resolved = np.dtype(dtype)
        if resolved.kind in "OSU":
            return cls.BYTES
        try:
            return _from_numpy()[resolved]
        except KeyError:
            raise InvalidInput(f"numpy dtype {resolved} has no inference datatype") from None


@cache
def _to_numpy() -> dict[DataType, np.dtype[Any]]:
    import numpy as np

    return {
        DataType.BOOL: np.dtype(np.bool_),
        DataType.UINT8: np.dtype(np.uint8),
        DataType.UINT16: np.dtype(np.uint16),
        DataType.UINT32: np.dtype(np.uint32),
        DataType.UINT64: np.dtype(np.uint64),
        DataType.INT8: np.dtype(np.int8),
        DataType.INT16: np.dtype(np.int16),
        DataType.INT32: np.dtype(np.int32),
        DataType.INT64: np.dtype(np.int64),
        DataType.FP16: np.dtype(np.float16),
        DataType.FP32: np.dtype(np.float32),
        DataType.FP64: np.dtype(np.float64),
        DataType.BYTES: np.dtype(np.object_),
    }


@cache
def _from_numpy() -> dict[np.dtype[Any], DataType]:
    return {
        dtype: datatype for datatype, dtype in _to_numpy().items() if datatype is not DataType.BYTES
    }


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor's datatype and shape; -1 marks a dynamic dimension.

    ``shape`` is ``None`` when the model does not record the rank at all.
    """

    name: str
    datatype: DataType
    shape: tuple[int, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datatype": self.datatype.value,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        shape = data.get("shape")
        return cls(
            name=str(data["name"]),
            datatype=DataType.parse(str(data["datatype"])),
            shape=None if shape is None else tuple(int(d) for d in shape),
        )

    def shape_text(self) -> str:
        if self.shape is None:
            return "[any rank]"
        return "[" + ", ".join("-1" if d < 0 else str(d) for d in self.shape) + "]"

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if self.shape is None:
            return True
        if len(shape) != len(self.shape):
            return False
        return all(want < 0 or want == got for want, got in zip(self.shape, shape, strict=True))


def _received_datatype(array: npt.NDArray[Any]) -> str:
    try:
        return DataType.from_numpy(array.dtype).value
    except InvalidInput:
        return f"numpy {array.dtype}"


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs a model takes and the outputs it gives."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    _by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {spec.name: spec for spec in self.inputs})

    def input(self, name: str) -> TensorSpec:
        """The input spec named ``name``; ``InvalidInput`` naming the valid inputs otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            valid = ", ".join(repr(spec.name) for spec in self.inputs)
            raise InvalidInput(f"unknown input {name!r}; the model takes {valid}") from None

    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def validate(self, tensors: Mapping[str, npt.NDArray[Any]]) -> None:
        """Check names, datatypes and shapes of ``tensors`` against the inputs.

        Raises:
            InvalidInput: naming the tensor, what was expected and what was received.
        """
        for name in tensors:
            self.input(name)
        for spec in self.inputs:
            array = tensors.get(spec.name)
            if array is None:
                raise InvalidInput(
                    f"missing input {spec.name!r} ({spec.datatype.value} {spec.shape_text()})"
                )
            if not _dtype_matches(spec.datatype, array):
                raise InvalidInput(
                    f"input {spec.name!r}: expected datatype {spec.datatype.value}, "
                    f"received {_received_datatype(array)}"
                )
            if not spec.accepts_shape(array.shape):
                received = "[" + ", ".join(str(d) for d in array.shape) + "]"
                raise InvalidInput(
                    f"input {spec.name!r}: expected shape {spec.shape_text()}, received {received}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(item) for item in data.get("inputs", ())),
            outputs=tuple(TensorSpec.from_dict(item) for item in data.get("outputs", ())),
        )


def _dtype_matches(datatype: DataType, array: npt.NDArray[Any]) -> bool:
    if datatype is DataType.BYTES:
        return array.dtype.kind in "OSU"
    return array.dtype == datatype.numpy


# Names users give models, aliases and tags: safe as path parts, URL segments and shell words.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 128
MAX_VERSION_DIGITS = 18  # what a signed 64-bit database column holds


def validate_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is a valid name, else raise ``InvalidName`` saying why."""
    if not name:
        raise InvalidName(f"{what} is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidName(f"{what} {name!r} contains control characters")
    if "/" in name or "\\" in name:
        raise InvalidName(f"{what} {name!r} contains a path separator")
    if ".." in name:
        raise InvalidName(f"{what} {name!r} contains '..'")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    """Aliases follow the name rules and must not look like a version number."""
    validate_name(alias, "alias")
    if alias.isdigit():
        raise InvalidName(f"alias {alias!r} is all digits, which would read as a version number")
    if alias == "latest":
        raise InvalidName("alias 'latest' is reserved: it always means the newest version")
    return alias


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A reference to a model version: ``name`` (latest), ``name@3`` or ``name@alias``."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name``, ``name@N``, ``name@alias`` or ``name@latest``."""
        name, sep, selector = text.partition("@")
        validate_name(name)
        if not sep or selector == "latest":
            return cls(name)
        if not selector:
            raise InvalidName(
                f"reference {text!r} has nothing after '@'; use {name}@3 or {name}@prod"
            )
        # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
        if selector.isascii() and selector.isdigit():
            if len(selector) > MAX_VERSION_DIGITS:
                raise InvalidName(
                    f"reference {text[:60]!r}: a version has at most {MAX_VERSION_DIGITS} digits"
                )
            version = int(selector)
            if version < 1:
                raise InvalidName(f"reference {text!r}: versions start at 1")
            return cls(name, version=version)
        return cls(name, alias=validate_alias(selector))

    @classmethod
    def coerce(cls, ref: ModelRef | str) -> ModelRef:
        return ref if isinstance(ref, ModelRef) else cls.parse(ref)

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` strings into a dict, validating each key."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"tag {item!r} must look like key=value")
        validate_name(key, "tag key")
        if any(ord(ch) < 32 for ch in value):
            raise InvalidName(f"tag {key!r} has control characters in its value")
        tags[key] = value
    return tags
