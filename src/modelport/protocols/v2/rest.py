"""V2 REST infer bodies: JSON with the binary tensor data extension, both ways.

The server side parses a request into an ``InferRequest`` and encodes its response
(``parse_request``, ``encode_response``); the client side encodes a request and decodes a
response (``encode_request``, ``decode_response``). A body with binary parts is its JSON
header, ``Inference-Header-Content-Length`` bytes long, followed by the raw tensors in the
order the header lists them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelport.errors import Internal, InvalidInput
from modelport.protocols.v2 import json_body
from modelport.protocols.v2.codec import (
    array_from_data,
    array_from_raw,
    check_declared,
    check_id,
    check_shape,
    data_for_json,
    raw_bytes,
)
from modelport.types import DataType, Signature, Tensors

__all__ = [
    "HEADER_LENGTH",
    "EncodedRequest",
    "InferRequest",
    "InferResponse",
    "decode_response",
    "encode_request",
    "encode_response",
    "parse_request",
]

HEADER_LENGTH = "inference-header-content-length"
_JSON_HEADERS = ((b"content-type", b"application/json"),)
_BINARY_HEADERS = ((b"content-type", b"application/octet-stream"),)


_NO_PARAMETERS: dict[str, Any] = {}  # read only
_NO_BINARY = memoryview(b"")


@dataclass(slots=True)
class InferRequest:
    """What an infer request asks for, decoded and checked.

    ``binary_outputs`` names the outputs to send as binary data; ``all_binary`` says every
    output goes so (``binary_data_output``), whichever are named.
    """

    inputs: Tensors
    outputs: list[str] | None
    all_binary: bool
    binary_outputs: frozenset[str]
    timeout: float | None
    id: str | None

    def wants_binary(self, name: str) -> bool:
        return self.all_binary or name in self.binary_outputs


def parse_request(
    body: bytes, header_length: str | None, signature: Signature | None
) -> InferRequest:
    """An infer request from its body and its Inference-Header-Content-Length header.
    Pure: runs in a worker thread for large bodies.

    ``signature`` judges binary inputs before they are decoded; it is needed (and given)
    only when the body has a binary part.

    Raises:
        InvalidInput: the body is malformed or its tensors do not decode.
        PayloadTooLarge: a JSON array in it is too long to parse safely.
    """
    document, binary = _split_body(body, header_length)
    request_id = check_id(document["id"]) if "id" in document else None
    inputs = _inputs(document, binary, signature)
    parameters = _parameters(document) if "parameters" in document else _NO_PARAMETERS
    all_binary = bool(parameters.get("binary_data_output", False))
    outputs, binary_outputs = _requested_outputs(document, all_binary)
    return InferRequest(
        inputs, outputs, all_binary, binary_outputs, _timeout(parameters), request_id
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is None:
        return json_body.request_body(body), _NO_BINARY
    # isascii(): isdigit() takes "²", which int() refuses.
    if not (header_length.isascii() and header_length.isdigit()) or (
        int(header_length) > len(body)
    ):
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length!r} is not a length within the "
            f"{len(body)}-byte body"
        )
    cut = int(header_length)
    view = memoryview(body)
    return json_body.json_object(view[:cut]), view[cut:]


def _inputs(document: dict[str, Any], binary: memoryview, signature: Signature | None) -> Tensors:
    items = document.get("inputs")
    if not isinstance(items, list) or not items:
        raise InvalidInput("request has no 'inputs' list")
    inputs: Tensors = {}
    offset = 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each input must be an object with a 'name'")
        name = item["name"]
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        datatype = DataType.parse(str(item.get("datatype")))
        shape = check_shape(name, item.get("shape"))
        size = (
            None if "parameters" not in item else _parameters(item, "input").get("binary_data_size")
        )
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size!r} runs past the "
                    f"{len(binary)} bytes of binary data sent"
                )
            # Raw data costs its decoding whatever the model takes: judge what it claims
            # first. (JSON data is parsed already; ``infer`` judges it once typed.)
            if signature is not None:
                check_declared(signature, name, datatype, shape)
            inputs[name] = array_from_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            inputs[name] = array_from_data(name, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    return inputs


def _parameters(holder: dict[str, Any], kind: str = "request") -> dict[str, Any]:
    """The ``parameters`` object of the request or of one of its inputs or outputs (``kind``);
    {} when there is none."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        where = kind if kind == "request" else f"{kind} {holder.get('name')!r}"
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object")
    return parameters


def _timeout(parameters: dict[str, Any]) -> float | None:
    """The request's own ``timeout`` parameter (microseconds, as Triton's clients send it)."""
    if "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(
            f"parameter 'timeout' must be a whole number of microseconds, not {value!r}"
        )
    return value / 1_000_000


def _requested_outputs(
    document: dict[str, Any], all_binary: bool
) -> tuple[list[str] | None, frozenset[str]]:
    """The names of the requested outputs (None: all) and those of them to send binary."""
    requested = document.get("outputs")
    if not requested:
        return None, frozenset()
    if not isinstance(requested, list):
        raise InvalidInput("'outputs' must be a list")
    names = []
    binary: set[str] = set()
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output must be an object with a 'name'")
        names.append(item["name"])
        wants_binary = _parameters(item, "output").get("binary_data", all_binary)
        if wants_binary:
            binary.add(item["name"])
    return names, frozenset(binary)


def encode_response(
    request: InferRequest, model_name: str, model_version: str, outputs: Tensors
) -> tuple[bytes, list[bytes], tuple[tuple[bytes, bytes], ...]]:
    """The response's JSON header, its binary chunks and its headers (all but Content-Length).

    Echoes the request ``id`` (checked and bounded) and no request parameters: those are
    options for this server, and response parameters are the server's own (Triton's carry
    sequence state only). Echoing them let 33 KB of gzip come back as a 34 MB response.
    """
    described = []
    chunks = []
    for name, array in outputs.items():
        datatype = DataType.from_numpy(array.dtype)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype.value,
            "shape": list(array.shape),
        }
        if request.wants_binary(name):
            chunk = raw_bytes(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = data_for_json(array)
        described.append(entry)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": described,
    }
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, chunks, _JSON_HEADERS
    length = (b"inference-header-content-length", str(len(header)).encode())
    return header, chunks, (*_BINARY_HEADERS, length)


# -- the client's side: Tensors -> request body, response body -> Tensors ------------------


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """A request body ready to send; ``header_length`` (the JSON header's size) is None for an
    all-JSON body, which then goes without the ``Inference-Header-Content-Length`` header."""

    body: bytes
    header_length: int | None


def encode_request(
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    outputs: Sequence[str] | None = None,
    binary: bool = True,
    request_id: str | None = None,
    timeout: float | None = None,
) -> EncodedRequest:
    """The body of an infer request for ``inputs``.

    With ``binary`` the tensors travel as raw bytes after the JSON header and every output is
    asked for as binary data too; otherwise everything is JSON (BYTES values as UTF-8 text).
    ``outputs`` names the outputs wanted (None: all). The datatype of each input is its
    array's (``DataType.from_numpy``): str and object arrays are BYTES. ``timeout``
    (seconds) goes as the ``timeout`` parameter, so the server drops the request when
    the client will have given up.

    Raises:
        InvalidInput: an array's dtype has no inference datatype.
    """
    described = []
    chunks = []
    for name, array in inputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": DataType.from_numpy(array.dtype).value,
            "shape": list(array.shape),
        }
        if binary:
            chunk = raw_bytes(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = data_for_json(array)
        described.append(entry)
    document: dict[str, Any] = {"inputs": described}
    if request_id is not None:
        document["id"] = request_id
    if outputs is not None:
        document["outputs"] = [{"name": name} for name in outputs]
    parameters: dict[str, Any] = {"binary_data_output": True} if binary else {}
    if timeout is not None:
        parameters["timeout"] = int(timeout * 1_000_000)
    if parameters:
        document["parameters"] = parameters
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return EncodedRequest(header, None)
    return EncodedRequest(b"".join([header, *chunks]), len(header))


@dataclass(frozen=True, slots=True)
class InferResponse:
    """A decoded infer response. Binary outputs are read-only views of the response body."""

    model_name: str
    model_version: str
    id: str | None
    outputs: Tensors


def decode_response(body: bytes, header_length: str | None) -> InferResponse:
    """An infer response from its body and ``Inference-Header-Content-Length`` header.

    Raises:
        Internal: the body is not a V2 infer response (a server bug, not worth retrying).
    """
    try:
        if header_length is None:
            document, binary = orjson.loads(body), memoryview(b"")
        else:
            cut = int(header_length)
            view = memoryview(body)
            document, binary = orjson.loads(view[:cut]), view[cut:]
        outputs: Tensors = {}
        offset = 0
        for item in document["outputs"]:
            name = item["name"]
            datatype = DataType.parse(item["datatype"])
            shape = tuple(item["shape"])
            size = (item.get("parameters") or {}).get("binary_data_size")
            if size is None:
                outputs[name] = _array_from_output_data(datatype, shape, item["data"])
            else:
                outputs[name] = array_from_raw(
                    name, datatype, shape, binary[offset : offset + size]
                )
                offset += size
        version = document.get("model_version")
        return InferResponse(
            model_name=str(document.get("model_name", "")),
            model_version="" if version is None else str(version),
            id=document.get("id"),
            outputs=outputs,
        )
    except (ValueError, KeyError, TypeError, InvalidInput) as exc:
        raise Internal(f"the server's infer response is malformed: {exc}") from None


def _array_from_output_data(
    datatype: DataType, shape: tuple[int, ...], data: Any
) -> npt.NDArray[Any]:
    """An output from its JSON ``data``, trusted as the server typed it (NaN comes as null)."""
    if datatype is DataType.BYTES:
        array = np.empty(len(data), dtype=object)
        array[:] = [v.encode() if isinstance(v, str) else v for v in data]
        return array.reshape(shape)
    if datatype.numpy.kind == "f":
        data = [math.nan if v is None else v for v in data]
    return np.asarray(data, dtype=datatype.numpy).reshape(shape)
