"""Checking Keras and SavedModel files without TensorFlow, and describing loaded models.

The file checks use ``zipfile``, ``json`` and ``os`` only, so detection and the refusals of
broken files work (and stay cheap) where TensorFlow is not installed. The signature helpers
take TensorFlow and Keras objects (as ``Any``) that the runtime has already loaded.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelport.errors import InvalidModel, UnsupportedFormat
from modelport.runtimes.base import last_error_line as short_message
from modelport.types import DataType, Signature, TensorSpec

__all__ = [
    "SERVING_KEY",
    "TF_DATATYPES",
    "UNSAFE_OPS",
    "check_keras_archive",
    "check_saved_model",
    "keras_signature",
    "saved_model_signature",
    "short_message",
    "signature_keys",
    "tensor_spec",
    "unsafe_ops",
]

SERVING_KEY = "serving_default"
_KERAS_WEIGHTS = ("model.weights.h5", "model.weights.npz")
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

# tf.DType.name -> the datatype served; anything else (bfloat16, complex, resources) is not.
TF_DATATYPES: dict[str, DataType] = {
    name: DataType.parse(datatype)
    for name, datatype in (
        ("float32", "FP32"), ("float64", "FP64"), ("float16", "FP16"), ("int8", "INT8"),
        ("int16", "INT16"), ("int32", "INT32"), ("int64", "INT64"), ("uint8", "UINT8"),
        ("uint16", "UINT16"), ("uint32", "UINT32"), ("uint64", "UINT64"), ("bool", "BOOL"),
        ("string", "BYTES"),
    )
}  # fmt: skip

# Graph operations that reach the host (files) or Python; a SavedModel's own save/restore
# functions use SaveV2/RestoreV2 on a path the loader gives, so those are not listed.
UNSAFE_OPS = frozenset(
    {
        "PyFunc", "PyFuncStateless", "EagerPyFunc", "ReadFile", "WriteFile", "MatchingFiles",
        "DeleteFile", "ImmutableConst", "DebugIdentityV2", "PrintV2",
    }
)  # fmt: skip


def check_keras_archive(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a Keras 3 ``.keras`` archive, read without Keras.

    Raises:
        InvalidModel: not a zip (truncated, garbage), or a zip without ``config.json``,
            ``metadata.json`` or weights, or with a config that is not JSON.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in ("config.json", "metadata.json") if name not in names]
            if not any(name in names for name in _KERAS_WEIGHTS):
                missing.append("model.weights.h5")
            if missing:
                raise InvalidModel(
                    f"{path.name} is not a complete Keras archive (model.save('x.keras')): "
                    f"no {', '.join(missing)}"
                )
            config = json.loads(archive.read("config.json"))
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidModel(
            f"{path.name} is not a Keras archive (not a zip file, or truncated): {exc}"
        ) from None
    except ValueError as exc:
        raise InvalidModel(f"{path.name}: config.json is damaged: {exc}") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise InvalidModel(f"{path.name}: config.json describes no Keras model")
    return config


def check_saved_model(path: Path) -> Path:
    """The ``saved_model.pb`` (or ``.pbtxt``) of a SavedModel directory, checked for the
    files TensorFlow needs before it is given them.

    Raises:
        InvalidModel: no graph file, or no ``variables/variables.index`` beside it.
    """
    graph = next((path / name for name in _SAVED_MODEL_FILES if (path / name).is_file()), None)
    if graph is None:
        raise InvalidModel(f"{path.name} is not a SavedModel directory: no saved_model.pb")
    if not (path / "variables" / "variables.index").is_file():
        raise InvalidModel(
            f"{path.name} is not a complete SavedModel: no variables/variables.index beside "
            f"{graph.name} (copy the whole directory tf.saved_model.save or model.export wrote)"
        )
    return graph


def unsafe_ops(saved_model: Any) -> list[str]:
    """The ``UNSAFE_OPS`` a parsed ``SavedModel`` proto uses anywhere, sorted."""
    found: set[str] = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        found.update(node.op for node in graph.node if node.op in UNSAFE_OPS)
        for function in graph.library.function:
            found.update(node.op for node in function.node_def if node.op in UNSAFE_OPS)
    return sorted(found)


def _datatype(dtype: Any, role: str, name: str) -> DataType:
    found = TF_DATATYPES.get(str(getattr(dtype, "name", dtype)))
    if found is None:
        supported = ", ".join(TF_DATATYPES)
        raise UnsupportedFormat(
            f"{role} {name!r} is {getattr(dtype, 'name', dtype)}, which modelport cannot "
            f"serve; supported dtypes: {supported}"
        )
    return found


def tensor_spec(name: str, value: Any, role: str) -> TensorSpec:
    """The spec of a KerasTensor or ``tf.TensorSpec``; unknown dimensions are -1."""
    shape = getattr(value, "shape", None)
    dims = None
    if shape is not None and getattr(shape, "rank", 0) is not None:
        dims = tuple(-1 if dim is None else int(dim) for dim in tuple(shape))
    return TensorSpec(name, _datatype(value.dtype, role, name), dims)


def keras_signature(model: Any) -> tuple[Signature, str, str]:
    """A Keras model's signature, and the structure of its inputs and of its outputs
    (``dict``, ``list`` or ``tensor``).

    Inputs are named by the keys of a dict of inputs, else by their ``keras.Input`` names;
    outputs by the keys of a dict of outputs (sorted, as TensorFlow flattens them), else by
    the names of the layers that compute them.

    Raises:
        UnsupportedFormat: a model that does not record its inputs (a subclassed model), or
            inputs and outputs of a dtype not served.
    """
    inputs, outputs = _structure(model, "input"), _structure(model, "output")
    input_kind, input_pairs = _named(inputs, lambda index, tensor: str(tensor.name))
    layer_names = _output_layer_names(model)
    output_kind, output_pairs = _named(outputs, lambda index, tensor: layer_names[index])
    for role, pairs in (("input", input_pairs), ("output", output_pairs)):
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise UnsupportedFormat(f"the Keras model has two {role}s of one name: {names}")
    signature = Signature(
        tuple(tensor_spec(name, tensor, "input") for name, tensor in input_pairs),
        tuple(tensor_spec(name, tensor, "output") for name, tensor in output_pairs),
    )
    return signature, input_kind, output_kind


def _structure(model: Any, role: str) -> Any:
    """``model.input`` (``.output``): a dict, a list or one KerasTensor."""
    try:
        return getattr(model, role)
    except (AttributeError, ValueError):
        pass
    # keras.Sequential is never "called" on its Input, but records it in .inputs/.outputs.
    tensors = getattr(model, f"{role}s", None)
    if not tensors:
        raise UnsupportedFormat(
            f"the Keras model {model.name!r} does not record its {role}s (a subclassed model?); "
            "build it with the Functional API or keras.Sequential, or export it as a SavedModel "
            "(model.export('dir')) and push that"
        )
    return tensors[0] if len(tensors) == 1 else list(tensors)


def _named(structure: Any, name_of: Any) -> tuple[str, list[tuple[str, Any]]]:
    if isinstance(structure, dict):
        return "dict", [(str(key), structure[key]) for key in sorted(structure)]
    if isinstance(structure, (list, tuple)):
        return "list", [(name_of(i, tensor), tensor) for i, tensor in enumerate(structure)]
    return "tensor", [(name_of(0, structure), structure)]


def _output_layer_names(model: Any) -> list[str]:
    names = getattr(model, "output_names", None)
    if names:
        return [str(name) for name in names]
    # keras.Sequential has no output_names: its one output is its last layer's.
    return [str(model.layers[-1].name)] if model.layers else ["output"]


def saved_model_signature(function: Any) -> Signature:
    """The signature of a SavedModel's ``serving_default`` function: inputs by their
    keyword names, outputs by the keys of the dict it returns, both sorted.

    Raises:
        UnsupportedFormat: positional inputs, nested outputs, or dtypes not served.
    """
    args, kwargs = function.structured_input_signature
    outputs = function.structured_outputs
    if args or not isinstance(outputs, dict):
        raise UnsupportedFormat(
            f"the SavedModel's {SERVING_KEY!r} signature is not keyword tensors in, a dict of "
            "tensors out; save it with tf.saved_model.save or model.export"
        )
    return Signature(
        tuple(tensor_spec(name, kwargs[name], "input") for name in sorted(kwargs)),
        tuple(tensor_spec(name, outputs[name], "output") for name in sorted(outputs)),
    )


def signature_keys(signatures: Iterable[str]) -> str:
    """Signature keys as a readable list, for messages."""
    return ", ".join(repr(key) for key in sorted(signatures)) or "none"
