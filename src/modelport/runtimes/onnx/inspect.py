"""Reading and checking ONNX model files without running them: which files make up a model,
whether they are safe to hand to a loader, and what signature the graph declares.

Needs ``onnx`` only, never onnxruntime, so jobs that only describe models stay light.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import onnx

from modelport.errors import InvalidModel, UnsupportedFormat
from modelport.runtimes.base import ModelFiles, ModelInfo, directory_files
from modelport.runtimes.onnx.skeleton import skeleton
from modelport.types import DataType, Signature, TensorSpec

__all__ = [
    "entry_file",
    "external_data_files",
    "inspect_model",
    "onnx_files",
    "read_model",
    "short_message",
    "signature",
]

_T = onnx.TensorProto
_DATATYPES: dict[int, DataType] = {
    _T.FLOAT: DataType.FP32,
    _T.DOUBLE: DataType.FP64,
    _T.FLOAT16: DataType.FP16,
    _T.INT8: DataType.INT8,
    _T.INT16: DataType.INT16,
    _T.INT32: DataType.INT32,
    _T.INT64: DataType.INT64,
    _T.UINT8: DataType.UINT8,
    _T.UINT16: DataType.UINT16,
    _T.UINT32: DataType.UINT32,
    _T.UINT64: DataType.UINT64,
    _T.BOOL: DataType.BOOL,
    _T.STRING: DataType.BYTES,
}
_ELEMENT_BYTES: dict[int, int] = {
    _T.FLOAT: 4,
    _T.DOUBLE: 8,
    _T.FLOAT16: 2,
    _T.BFLOAT16: 2,
    _T.INT8: 1,
    _T.INT16: 2,
    _T.INT32: 4,
    _T.INT64: 8,
    _T.UINT8: 1,
    _T.UINT16: 2,
    _T.UINT32: 4,
    _T.UINT64: 8,
    _T.BOOL: 1,
    _T.COMPLEX64: 8,
    _T.COMPLEX128: 16,
    _T.FLOAT8E4M3FN: 1,
    _T.FLOAT8E4M3FNUZ: 1,
    _T.FLOAT8E5M2: 1,
    _T.FLOAT8E5M2FNUZ: 1,
}
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def inspect_model(path: Path) -> ModelInfo:
    """Validate the ONNX model at ``path`` (file or directory) and describe it.

    For a file, the files are the file and its external data; for a directory, every regular
    file under it, so the directory is preserved as it is.

    Raises:
        InvalidModel: missing, empty, corrupt or truncated file, a failed ONNX check, a
            graph with no outputs, or external data / symlinks that are missing, point
            outside the model directory, or give a range onnxruntime would refuse.
        UnsupportedFormat: an input or output of a type modelport cannot serve.
    """
    entry = entry_file(path)
    model, data = read_model_bytes(entry, weights=False)
    external = external_data_files(model, entry)
    try:
        # The checker resolves external data against the model's path, not the cwd; without
        # external data it checks the bytes already read instead of re-serialising the proto.
        onnx.checker.check_model(str(entry) if external else data)
    except (onnx.checker.ValidationError, ValueError) as exc:
        message = f"{entry.name} is not a valid ONNX model: {short_message(exc)}"
        raise InvalidModel(message) from exc
    if not model.graph.output:
        # onnxruntime loads it, or refuses an empty graph; either way nothing can be asked.
        raise InvalidModel(
            f"{entry.name}: the graph has no outputs, so it can never answer a request"
        )
    described = signature(model)
    if path.is_dir():
        files = ModelFiles(path, entry.name, directory_files(path))
    else:
        files = ModelFiles(entry.parent, entry.name, (entry.name, *external))
    return ModelInfo(files, described, _metadata(model))


def onnx_files(directory: Path) -> list[Path]:
    """The ``.onnx`` files at the top of ``directory``, hidden ones (e.g. ``._x.onnx``) aside."""
    return sorted(
        child
        for child in directory.iterdir()
        if child.suffix.lower() == ".onnx" and not child.name.startswith(".") and child.is_file()
    )


def entry_file(path: Path) -> Path:
    """``path`` itself, or the single ``.onnx`` file of a directory; ``InvalidModel`` if none."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise InvalidModel(f"{path} does not exist")
    found = onnx_files(path)
    if len(found) != 1:
        listed = ", ".join(child.name for child in found) or "none"
        raise InvalidModel(
            f"{path.name}: a model directory needs exactly one top-level .onnx file; found {listed}"
        )
    return found[0]


def read_model(entry: Path) -> Any:
    """Parse ``entry`` as a ``ModelProto``, leaving external data unread."""
    return read_model_bytes(entry)[0]


def read_model_bytes(entry: Path, *, weights: bool = True) -> tuple[Any, bytes]:
    """Parse ``entry`` as a ``ModelProto`` and keep the bytes it was parsed from.

    The checker takes the same bytes, so a big model is read once and never re-serialised.
    Without ``weights``, the proto lacks the values of the main graph's initializers (see
    ``onnx.skeleton``): what describing a model needs, at a fraction of the parse.

    Raises:
        InvalidModel: the file is empty, unreadable, truncated or not an ONNX protobuf.
    """
    try:
        data = entry.read_bytes()
        if not data:
            raise InvalidModel(f"{entry.name} is an empty file, not an ONNX model")
        cut = None if weights else skeleton(data)
        return onnx.load_model_from_string(data if cut is None else cut), data
    except OSError as exc:
        raise InvalidModel(f"{entry.name} could not be read: {exc.strerror or exc}") from exc
    except InvalidModel:
        raise
    except Exception as exc:  # protobuf's DecodeError and whatever else a bad file provokes
        message = f"{entry.name} is not a valid ONNX model (truncated or corrupt)"
        raise InvalidModel(f"{message}: {short_message(exc)}") from exc


def external_data_files(model: Any, entry: Path) -> tuple[str, ...]:
    """The external data files ``model`` needs, relative to its directory, sorted, once each.

    Every tensor is checked (initializers, attributes, subgraphs, functions): loaders that
    follow a location like ``../../etc/passwd`` read files the model's author chose.

    Raises:
        InvalidModel: a location that is absolute, climbs with ``..``, resolves (through
            symlinks) outside the directory, or is missing; an offset or length that is
            negative or malformed, a length that is not the tensor's size, or a range that
            ends past the file.
    """
    root = entry.parent.resolve()
    found: set[str] = set()
    for tensor in _tensors(model):
        if tensor.data_location != _T.EXTERNAL:
            continue
        fields = {item.key: item.value for item in tensor.external_data}
        location = fields.get("location", "")
        where = f"{entry.name}: external data location {location!r} (tensor {tensor.name!r})"
        windows = PureWindowsPath(location)  # also splits on "\", which posix paths do not
        if not location or "\x00" in location or windows.anchor or ".." in windows.parts:
            raise InvalidModel(f"{where} points outside the model directory")
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise InvalidModel(f"{where} points outside the model directory")
        if not target.is_file():
            raise InvalidModel(f"{where} names a file that does not exist")
        _check_extent(tensor, fields, where, target.stat().st_size)
        found.add(PurePosixPath(location).as_posix())
    return tuple(sorted(found))


def _check_extent(tensor: Any, fields: dict[str, str], where: str, file_size: int) -> None:
    """Refuse an external data range onnxruntime would refuse at every load: a negative or
    malformed offset or length, a length other than the tensor's size, or a range that
    ends past the file."""
    try:
        offset = int(fields.get("offset", "0"))
        length = int(fields["length"]) if "length" in fields else None
    except ValueError:
        raise InvalidModel(f"{where} has a malformed offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise InvalidModel(f"{where} has a negative offset or length ({offset}, {length})")
    size = _byte_size(tensor)
    if length is not None and size is not None and length != size:
        raise InvalidModel(
            f"{where} gives a length of {length} bytes, but the tensor holds {size} bytes"
        )
    end = offset + (length if length is not None else size or 0)
    if end > file_size:
        raise InvalidModel(
            f"{where} needs bytes {offset} to {end}, but the file is shorter ({file_size} "
            "bytes; truncated?)"
        )


def _byte_size(tensor: Any) -> int | None:
    """How many bytes a tensor's data takes, for element types of whole bytes (``None``
    for strings and packed sub-byte types, whose size onnxruntime works out otherwise)."""
    width = _ELEMENT_BYTES.get(tensor.data_type)
    if width is None:
        return None
    return int(math.prod(tensor.dims)) * width


def _tensors(model: Any) -> Iterator[Any]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse_tensors = [*attribute.sparse_tensors]
        if attribute.HasField("sparse_tensor"):
            sparse_tensors.append(attribute.sparse_tensor)
        for sparse in sparse_tensors:
            yield from (sparse.values, sparse.indices)
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)


def signature(model: Any) -> Signature:
    """The graph's inputs (initializers listed as inputs left out) and outputs.

    Dimensions with a symbolic or unknown size are -1; a tensor without a shape has shape
    ``None``. scikit-learn's probability maps, sequence(map(int64|string, float)), are
    described as FP32 ``[-1, -1]``: one row per sample, one column per class.

    Raises:
        UnsupportedFormat: an element type with no ``DataType`` (bfloat16, complex, float8,
            int4, ...) or any other non-tensor input or output, naming the tensor.
    """
    graph = model.graph
    initialized = {tensor.name for tensor in graph.initializer}
    initialized.update(sparse.values.name for sparse in graph.sparse_initializer)
    return Signature(
        inputs=tuple(
            _spec(value, "input") for value in graph.input if value.name not in initialized
        ),
        outputs=tuple(_spec(value, "output") for value in graph.output),
    )


def _spec(value: Any, role: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind == "tensor_type":
        tensor = value.type.tensor_type
        datatype = _DATATYPES.get(tensor.elem_type)
        if datatype is None:
            supported = ", ".join(_element_name(element) for element in _DATATYPES)
            raise UnsupportedFormat(
                f"{role} {value.name!r} has element type {_element_name(tensor.elem_type)}, "
                f"which modelport cannot serve; supported element types: {supported}"
            )
        if not tensor.HasField("shape"):
            return TensorSpec(value.name, datatype, None)
        dims = tuple(dim.dim_value if dim.dim_value > 0 else -1 for dim in tensor.shape.dim)
        return TensorSpec(value.name, datatype, dims)
    if role == "output" and _is_probability_map(value.type):
        return TensorSpec(value.name, DataType.FP32, (-1, -1))
    raise UnsupportedFormat(
        f"{role} {value.name!r} is a {_type_text(value.type)}; modelport serves tensors "
        "(and scikit-learn probability maps as outputs)"
    )


def _is_probability_map(type_proto: Any) -> bool:
    if type_proto.WhichOneof("value") != "sequence_type":
        return False
    element = type_proto.sequence_type.elem_type
    if element.WhichOneof("value") != "map_type":
        return False
    mapping = element.map_type
    return bool(
        mapping.key_type in (_T.INT64, _T.STRING)
        and mapping.value_type.WhichOneof("value") == "tensor_type"
        and mapping.value_type.tensor_type.elem_type == _T.FLOAT
    )


def _type_text(type_proto: Any) -> str:
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        element = _element_name(getattr(type_proto, kind).elem_type)
        return f"{kind.removesuffix('_type')}({element})"
    if kind in ("sequence_type", "optional_type"):
        return f"{kind.removesuffix('_type')}({_type_text(getattr(type_proto, kind).elem_type)})"
    if kind == "map_type":
        mapping = type_proto.map_type
        return f"map({_element_name(mapping.key_type)}, {_type_text(mapping.value_type)})"
    return "value with no type"


def _element_name(element_type: int) -> str:
    try:
        return str(_T.DataType.Name(element_type))
    except ValueError:
        return f"element type {element_type}"


def _metadata(model: Any) -> dict[str, Any]:
    return {
        "ir_version": model.ir_version,
        "opsets": {opset.domain or "ai.onnx": opset.version for opset in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "properties": {prop.key: prop.value for prop in model.metadata_props},
    }


def short_message(exc: BaseException) -> str:
    """The first line of an exception's message, without onnxruntime's status prefix."""
    lines = str(exc).strip().splitlines()
    text = _ORT_PREFIX.sub("", lines[0] if lines else type(exc).__name__)
    return text if len(text) <= 300 else text[:297] + "..."
