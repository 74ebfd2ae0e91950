"""TensorFlow Serving's REST bodies: ``:predict`` requests (row and columnar formats) to
``Tensors``, ``Tensors`` to their answers, and a signature as TF's ``SignatureDefMap``.

JSON is typed by the model signature and refused where a value would change
(``tensorio.array_from_json``, the rule of every JSON edge); ``{"b64": "..."}`` carries binary
BYTES values. BYTES outputs are UTF-8 strings, or ``{"b64": ...}`` when the output name ends
in ``_bytes`` or the value is not UTF-8.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput
from modelport.protocols.v2.json_body import json_object
from modelport.tensorio import array_from_json
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = [
    "SIGNATURE_NAME",
    "PredictRequest",
    "parse_predict",
    "predict_response",
    "signature_def_map",
]

SIGNATURE_NAME = "serving_default"
_TF_NAMES = {
    DataType.FP16: "HALF",
    DataType.FP32: "FLOAT",
    DataType.FP64: "DOUBLE",
    DataType.BYTES: "STRING",
}
_TF_DTYPES = {d: f"DT_{_TF_NAMES.get(d, d.value)}" for d in DataType}  # DT_INT8, DT_BOOL, ...


def signature_def_map(signature: Signature) -> dict[str, Any]:
    """``signature`` as TF's ``SignatureDefMap``, under ``serving_default``."""

    def tensors(specs: tuple[TensorSpec, ...]) -> dict[str, Any]:
        return {
            spec.name: {
                "dtype": _TF_DTYPES[spec.datatype],
                "tensor_shape": {
                    "dim": [{"size": str(d), "name": ""} for d in spec.shape or ()],
                    "unknown_rank": spec.shape is None,
                },
                "name": spec.name,
            }
            for spec in specs
        }

    return {
        "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
        "signature_def": {
            SIGNATURE_NAME: {
                "inputs": tensors(signature.inputs),
                "outputs": tensors(signature.outputs),
                "method_name": "tensorflow/serving/predict",
            }
        },
    }


# -- request: JSON -> Tensors -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A decoded ``:predict`` body: its tensors, and whether it came in the row format
    (``instances``; answered with ``predictions``) or the columnar one (``inputs``;
    answered with ``outputs``)."""

    inputs: Tensors
    row_format: bool


def parse_predict(body: bytes, signature: Signature) -> PredictRequest:
    """A ``:predict`` body, typed by ``signature``. Raises ``InvalidInput``."""
    document = json_object(body, '{"instances": [...]}')
    name = document.get("signature_name", SIGNATURE_NAME)
    if name not in (SIGNATURE_NAME, ""):
        raise InvalidInput(f"unknown signature_name {name!r}; the model has {SIGNATURE_NAME!r}")
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows == has_columns:
        which = "both 'instances' and" if has_rows else "neither 'instances' nor"
        raise InvalidInput(
            f"request has {which} 'inputs'; send exactly one: "
            '{"instances": [row, ...]} or {"inputs": {name: value, ...}}'
        )
    if has_rows:
        return PredictRequest(_from_instances(document["instances"], signature), row_format=True)
    return PredictRequest(_from_inputs(document["inputs"], signature), row_format=False)


def _from_instances(instances: Any, signature: Signature) -> Tensors:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list of rows")
    named = [_is_named(row) for row in instances]
    if not any(named):
        return {(spec := _only_input(signature)).name: _array(instances, spec.datatype, spec.name)}
    if not all(named):
        raise InvalidInput("'instances' mixes objects and plain values; use one form for all rows")
    keys = instances[0].keys()
    for index, row in enumerate(instances):
        if row.keys() != keys:
            raise InvalidInput(
                f"instance {index} has inputs {sorted(row)}, instance 0 has {sorted(keys)}; "
                "every row must name the same inputs"
            )
    return {
        key: _array([row[key] for row in instances], signature.input(key).datatype, key)
        for key in keys
    }


def _from_inputs(inputs: Any, signature: Signature) -> Tensors:
    if not _is_named(inputs):
        spec = _only_input(signature)
        return {spec.name: _array(inputs, spec.datatype, spec.name)}
    return {key: _array(value, signature.input(key).datatype, key) for key, value in inputs.items()}


def _is_named(value: Any) -> bool:
    """An object naming inputs (as opposed to a ``{"b64": ...}`` value)."""
    return isinstance(value, dict) and not (len(value) == 1 and "b64" in value)


def _only_input(signature: Signature) -> TensorSpec:
    if len(signature.inputs) != 1:
        names = ", ".join(repr(s.name) for s in signature.inputs)
        raise InvalidInput(
            f"the model takes {len(signature.inputs)} inputs ({names}); name them: "
            '{"instances": [{"input": value, ...}, ...]} or {"inputs": {"input": value, ...}}'
        )
    return signature.inputs[0]


def _array(value: Any, datatype: DataType, name: str) -> npt.NDArray[Any]:
    if datatype is DataType.BYTES:
        value = _decode_b64(value, name)
    return array_from_json(value, datatype, name)


def _decode_b64(value: Any, name: str) -> Any:
    """``value`` with each ``{"b64": "..."}`` in it replaced by its bytes (in place: the
    request's own lists). A loop, not recursion: JSON may nest deeper than Python recurses."""
    if isinstance(value, dict):
        return _b64(value, name)
    pending = [value] if isinstance(value, list) else []
    while pending:
        items = pending.pop()
        for index, item in enumerate(items):
            if isinstance(item, list):
                pending.append(item)
            elif isinstance(item, dict):
                items[index] = _b64(item, name)
    return value


def _b64(value: dict[str, Any], name: str) -> bytes:
    encoded = value.get("b64")
    if len(value) != 1 or not isinstance(encoded, str):
        raise InvalidInput(f'input {name!r}: objects in values must be {{"b64": "..."}}')
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise InvalidInput(f"input {name!r}: invalid base64 ({exc})") from None


# -- response: Tensors -> JSON ------------------------------------------------------------


def predict_response(request: PredictRequest, outputs: Tensors) -> dict[str, Any]:
    """The JSON answer to ``request``: ``{"predictions": ...}`` for the row format,
    ``{"outputs": ...}`` for the columnar one (one output's value alone, else by name).

    Raises:
        InvalidInput: the row format was asked for but the outputs do not split into rows.
    """
    if request.row_format:
        return {"predictions": _rows(outputs)}
    values = {name: _value(name, array) for name, array in outputs.items()}
    return {"outputs": values.popitem()[1] if len(values) == 1 else values}


def _rows(outputs: Tensors) -> Any:
    """One prediction per row: the row's value, or ``{output: value}`` for several outputs."""
    sizes = {name: array.shape[0] if array.ndim else None for name, array in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise InvalidInput(
            f"outputs have batch sizes {sizes}, which do not split into rows; "
            'send the columnar format {"inputs": ...} instead'
        )
    if len(outputs) == 1:
        return _value(*next(iter(outputs.items())))
    columns = {name: _split(_value(name, array)) for name, array in outputs.items()}
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _split(value: Any) -> list[Any]:
    if isinstance(value, np.ndarray):
        # Python scalars from 1-d outputs: orjson refuses some numpy scalar types (longlong).
        return value.tolist() if value.ndim == 1 else list(value)
    return list(value)


def _value(name: str, array: npt.NDArray[Any]) -> Any:
    """A JSON-ready value: numeric arrays go to orjson as they are (no Python lists)."""
    if array.dtype.kind not in "OSU":
        # orjson writes C-contiguous arrays of one or more dimensions, not 0-d ones.
        return np.ascontiguousarray(array) if array.ndim else array.item()
    as_b64 = name.endswith("_bytes")
    texts = np.frompyfunc(lambda item: _text(item, as_b64), 1, 1)(array)
    return np.asarray(texts, dtype=object).tolist()


def _text(item: Any, as_b64: bool) -> Any:
    if isinstance(item, str):
        item = item.encode()
    if not as_b64:
        try:
            return item.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(item).decode("ascii")}
