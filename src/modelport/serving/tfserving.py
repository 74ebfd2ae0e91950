"""TensorFlow Serving's REST API, so that clients written for TF Serving work unchanged.

Routes (each under ``/v1/models/NAME``, ``.../versions/N`` or ``.../labels/LABEL``; a label
is a registry alias, resolved on every request so a moved alias is followed at once):

- ``GET``: model status, ``{"model_version_status": [...]}``: AVAILABLE when loaded, START
  until first use loads it, END when unloaded or failed (with the reason). Without a version
  or label it lists every version this server knows of the model.
- ``GET .../metadata``: the signature as TF's ``SignatureDefMap`` under ``serving_default``.
- ``POST ...:predict``: the row format ``{"instances": [...]}`` answered with
  ``{"predictions": [...]}``, or the columnar format ``{"inputs": ...}`` answered with
  ``{"outputs": ...}``. JSON is typed by the model signature and refused where a value would
  change; ``{"b64": "..."}`` carries binary BYTES values. BYTES outputs are UTF-8 strings,
  or ``{"b64": ...}`` when the output name ends in ``_bytes`` or the value is not UTF-8.

Errors are ``{"error": "..."}`` with the shared status table of ``http.py``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.errors import InvalidInput, NotFound
from modelport.protocols.v2.json_body import json_object
from modelport.serving.deployment import Deployment, State
from modelport.serving.http import json_response, read_body
from modelport.serving.manager import ModelManager
from modelport.tensorio import array_from_json
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = ["routes"]

PROTOCOL = "tfserving"
SIGNATURE_NAME = "serving_default"
_ADDRESSES = (
    "/v1/models/{name}",
    "/v1/models/{name}/versions/{version}",
    "/v1/models/{name}/labels/{label}",
)

_TF_NAMES = {
    DataType.FP16: "HALF",
    DataType.FP32: "FLOAT",
    DataType.FP64: "DOUBLE",
    DataType.BYTES: "STRING",
}
_TF_DTYPES = {d: f"DT_{_TF_NAMES.get(d, d.value)}" for d in DataType}  # DT_INT8, DT_BOOL, ...
# TF's ModelVersionStatus.State. A version not loaded yet (or evicted) loads on first use,
# which is what TF calls START: the manager is waiting to load it.
_TF_STATES = {
    State.READY: "AVAILABLE",
    State.LOADING: "LOADING",
    State.UNLOADING: "UNLOADING",
    State.UNAVAILABLE: "START",
    State.FAILED: "END",
}


def routes(manager: ModelManager, max_body: int) -> list[Route]:
    """TF Serving's status, metadata and predict routes, bound to one manager."""

    async def addressed(request: Request) -> Deployment:
        params = request.path_params
        if "label" in params:
            return await manager.by_alias(params["name"], params["label"])
        return await manager.deployment(params["name"], params.get("version"))

    async def status(request: Request) -> Response:
        if any(":" in value for value in request.path_params.values()):
            return await unsupported(request)  # a GET of NAME:predict; names hold no ':'
        served = manager.served(request.path_params["name"])
        if "version" in request.path_params or "label" in request.path_params:
            deployments = [await addressed(request)]
        else:
            deployments = sorted(served.deployments.values(), key=lambda d: d.version)
        rows = [_status(d, served.enabled) for d in deployments]
        return json_response({"model_version_status": rows})

    async def metadata(request: Request) -> Response:
        deployment = await addressed(request)
        spec = {"name": deployment.name, "signature_name": "", "version": str(deployment.version)}
        signature_def = _signature_def_map(deployment.signature)
        return json_response({"model_spec": spec, "metadata": {"signature_def": signature_def}})

    async def predict(request: Request) -> Response:
        deployment = await addressed(request)
        body = await read_body(request, max_body)
        rows, inputs = _parse_request(body, deployment.signature)
        outputs, deployment = await manager.infer(
            deployment.name, deployment.version, inputs, None, PROTOCOL
        )
        if rows:
            return json_response({"predictions": _rows(outputs)})
        values = {name: _value(name, array) for name, array in outputs.items()}
        return json_response({"outputs": values.popitem()[1] if len(values) == 1 else values})

    async def unsupported(request: Request) -> Response:
        raise NotFound(
            f"no TF Serving endpoint {request.method} {request.url.path}; modelport serves "
            "GET /v1/models/NAME[/versions/N|/labels/L][/metadata] and "
            "POST /v1/models/NAME[/versions/N|/labels/L]:predict"
        )

    table = []
    for prefix in _ADDRESSES:
        table += [
            Route(prefix, status, methods=["GET"]),
            Route(f"{prefix}/metadata", metadata, methods=["GET"]),
            Route(f"{prefix}:predict", predict, methods=["POST"]),
        ]
    # Last: anything else under /v1/models (":classify", a POST to a status URL, ...) gets a
    # JSON 404 that says what is served, instead of a bare 405 or "no such endpoint".
    table.append(Route("/v1/models/{rest:path}", unsupported, methods=["GET", "POST"]))
    return table


def _status(deployment: Deployment, enabled: bool) -> dict[str, Any]:
    state = _TF_STATES[deployment.state] if enabled else "END"
    failed = deployment.state is State.FAILED
    return {
        "version": str(deployment.version),
        "state": state,
        "status": {
            "error_code": "UNKNOWN" if failed else "OK",
            "error_message": deployment.reason if failed else "",
        },
    }


def _signature_def_map(signature: Signature) -> dict[str, Any]:
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


def _parse_request(body: bytes, signature: Signature) -> tuple[bool, Tensors]:
    """(row format?, tensors) from a predict body. Raises ``InvalidInput``."""
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
        return True, _from_instances(document["instances"], signature)
    return False, _from_inputs(document["inputs"], signature)


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
