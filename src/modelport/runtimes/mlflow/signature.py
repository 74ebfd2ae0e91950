"""Reading an MLflow model directory without running it: the ``MLmodel`` file, its flavors,
the signature it records and its saved input example.

Needs PyYAML only (never mlflow), imported on first use: modelport's core does not depend on
it, and detection never reads the file.

Signatures map to tensors as follows (``input_kind`` records how ``predict`` feeds pyfunc):

- tensor-based: one tensor per spec, dtype and shape as recorded; a lone unnamed input is
  ``input`` (fed as an array, ``"array"``), named ones keep their names (fed as a dict,
  ``"dict"``);
- column-based (a pandas schema): columns that all share one type become one 2-D tensor
  ``input`` ``[-1, n_columns]`` (``"frame"``: rows are rebuilt into a DataFrame with the
  recorded column names); columns of mixed types become one ``[-1]`` tensor per column,
  named after it (``"columns"``);
- outputs: a lone unnamed output is ``predictions``; several unnamed ones ``output_0``,
  ``output_1``...; named ones keep their names. Column outputs are ``[-1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import InvalidInput, InvalidModel, MissingDependency, UnsupportedFormat
from modelport.runtimes.sklearn.tabular import INPUT, short_message
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = [
    "MLMODEL",
    "PREDICTIONS",
    "MLModel",
    "RecordedSignature",
    "read_mlmodel",
    "recorded_signature",
    "saved_example",
]

MLMODEL = "MLmodel"
PREDICTIONS = "predictions"

# MLflow's column types (mlflow.types.DataType); datetime, arrays, objects and maps have no
# tensor form.
_COLUMN_TYPES = {
    "boolean": DataType.BOOL,
    "integer": DataType.INT32,
    "long": DataType.INT64,
    "float": DataType.FP32,
    "double": DataType.FP64,
    "string": DataType.BYTES,
    "binary": DataType.BYTES,
}


@dataclass(frozen=True, slots=True)
class MLModel:
    """What an ``MLmodel`` file says: flavors (name -> configuration) and the rest, raw."""

    directory: Path
    flavors: dict[str, dict[str, Any]]
    document: dict[str, Any]

    @property
    def mlflow_version(self) -> str | None:
        version = self.document.get("mlflow_version")
        return None if version is None else str(version)

    def flavor_file(self, flavor: str, key: str) -> Path:
        """The file the flavor's ``key`` names, checked to exist inside the directory.

        Raises:
            InvalidModel: the key is missing, or names a file that is missing or outside.
        """
        where = f"{self.directory.name}/{MLMODEL}"
        relative = self.flavors[flavor].get(key)
        if not isinstance(relative, str) or not relative:
            raise InvalidModel(f"{where}: the {flavor!r} flavor names no {key!r} file")
        path = self.directory / relative
        inside = path.resolve().is_relative_to(self.directory.resolve())
        if not inside or Path(relative).is_absolute():
            raise InvalidModel(
                f"{where}: the {flavor!r} flavor names {relative}, outside the model"
            )
        if not path.exists():
            raise InvalidModel(
                f"{where}: the {flavor!r} flavor names {relative}, which is missing from the "
                "directory"
            )
        return path


@dataclass(frozen=True, slots=True)
class RecordedSignature:
    """A signature read from ``MLmodel``, with how pyfunc takes its inputs."""

    signature: Signature
    input_kind: str
    """``array``, ``dict``, ``frame`` or ``columns`` (see the module docstring)."""
    columns: tuple[str, ...] = ()
    """Column names, for ``frame``."""


def read_mlmodel(directory: Path) -> MLModel:
    """Parse ``directory/MLmodel`` with ``yaml.safe_load`` (which builds no Python objects).

    Raises:
        MissingDependency: PyYAML is not installed.
        InvalidModel: unreadable, not YAML, not a mapping, or listing no flavors.
    """
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependency(
            "reading MLflow models needs PyYAML: pip install 'modelport[mlflow]'"
        ) from exc
    where = f"{directory.name}/{MLMODEL}"
    try:
        document = yaml.safe_load((directory / MLMODEL).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidModel(f"{where} is not a readable YAML file: {short_message(exc)}") from exc
    if not isinstance(document, dict):
        raise InvalidModel(f"{where} is not an MLflow model description (a YAML mapping)")
    flavors = document.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise InvalidModel(f"{where} lists no flavors; MLflow's save_model writes at least one")
    for name, configuration in flavors.items():
        if not isinstance(configuration, dict):
            raise InvalidModel(f"{where}: flavor {name!r} has no configuration mapping")
    return MLModel(directory, {str(k): v for k, v in flavors.items()}, document)


def recorded_signature(model: MLModel) -> RecordedSignature | None:
    """The signature ``MLmodel`` records; ``None`` without one or without outputs.

    Raises:
        InvalidModel: a signature that is not MLflow's JSON schema.
        UnsupportedFormat: a column or tensor type with no tensor form.
    """
    raw = model.document.get("signature")
    if not isinstance(raw, dict) or not raw.get("inputs") or not raw.get("outputs"):
        return None
    inputs = _schema(model, raw["inputs"], "inputs")
    outputs = _schema(model, raw["outputs"], "outputs")
    output_specs = _outputs(outputs)
    if all(item.get("type") == "tensor" for item in inputs):
        specs = [_tensor(item, item.get("name") or INPUT) for item in inputs]
        kind = "array" if len(specs) == 1 and not inputs[0].get("name") else "dict"
        return RecordedSignature(Signature(tuple(specs), output_specs), kind)
    columns = [_column(item, item.get("name") or f"column_{i}") for i, item in enumerate(inputs)]
    names = tuple(spec.name for spec in columns)
    if len({spec.datatype for spec in columns}) == 1:
        spec = TensorSpec(INPUT, columns[0].datatype, (-1, len(columns)))
        return RecordedSignature(Signature((spec,), output_specs), "frame", names)
    return RecordedSignature(Signature(tuple(columns), output_specs), "columns", names)


def saved_example(model: MLModel) -> Tensors | None:
    """The saved input example as tensors, when it is an array or a dict of arrays.

    JSON keeps no dtypes: floats read as FP64, integers as INT64. DataFrame examples are not
    read (MLflow records a signature alongside them).

    Raises:
        InvalidModel: the example file is missing or not JSON.
    """
    info = model.document.get("saved_input_example_info")
    if not isinstance(info, dict) or info.get("type") != "ndarray":
        return None
    path = _example_path(model, info)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidModel(f"{path.name} is not a readable JSON example: {exc}") from exc
    if isinstance(data, dict) and "inputs" in data:
        data = data["inputs"]
    try:
        if isinstance(data, dict):
            return {str(name): np.asarray(value) for name, value in data.items()}
        return {INPUT: np.asarray(data)}
    except ValueError as exc:
        raise InvalidModel(f"{path.name}: the example is not rectangular: {exc}") from exc


def _example_path(model: MLModel, info: dict[str, Any]) -> Path:
    relative = str(info.get("artifact_path") or "input_example.json")
    path = model.directory / relative
    if not path.resolve().is_relative_to(model.directory.resolve()) or not path.is_file():
        raise InvalidModel(f"{model.directory.name}: the saved input example {relative} is missing")
    return path


def _schema(model: MLModel, text: Any, what: str) -> list[dict[str, Any]]:
    try:
        items = json.loads(text) if isinstance(text, str) else text
    except ValueError as exc:
        message = f"{model.directory.name}/{MLMODEL}: signature {what} are not JSON"
        raise InvalidModel(f"{message}: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InvalidModel(
            f"{model.directory.name}/{MLMODEL}: signature {what} are not a list of specs"
        )
    return items


def _outputs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    specs = []
    for index, item in enumerate(items):
        name = item.get("name") or (PREDICTIONS if len(items) == 1 else f"output_{index}")
        specs.append(_tensor(item, name) if item.get("type") == "tensor" else _column(item, name))
    return tuple(specs)


def _tensor(item: dict[str, Any], name: str) -> TensorSpec:
    spec = item.get("tensor-spec")
    if not isinstance(spec, dict):
        raise InvalidModel(f"signature tensor {name!r} has no tensor-spec")
    try:
        datatype = DataType.from_numpy(np.dtype(str(spec.get("dtype"))))
    except (TypeError, InvalidInput) as exc:
        raise UnsupportedFormat(
            f"signature tensor {name!r} has dtype {spec.get('dtype')!r}, which modelport cannot "
            "serve"
        ) from exc
    shape = spec.get("shape")
    if shape is None:
        return TensorSpec(name, datatype, None)
    return TensorSpec(name, datatype, tuple(int(d) for d in shape))


def _column(item: dict[str, Any], name: str) -> TensorSpec:
    kind = str(item.get("type"))
    datatype = _COLUMN_TYPES.get(kind)
    if datatype is None:
        raise UnsupportedFormat(
            f"signature column {name!r} has type {kind!r}; modelport serves columns of type "
            f"{', '.join(_COLUMN_TYPES)}"
        )
    return TensorSpec(name, datatype, (-1,))
