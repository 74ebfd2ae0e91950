"""Open Inference Protocol (KServe V2) over REST, with the binary tensor data and model
repository extensions. Translates wire <-> ``Tensors`` and calls the ``ModelManager``."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport import __version__
from modelport.errors import InvalidInput, ModelportError
from modelport.serving import v2_json
from modelport.serving.deployment import Deployment, State
from modelport.serving.http import (
    error_response,
    header_values,
    json_response,
    read_body,
    receive_body,
)
from modelport.serving.manager import ModelManager
from modelport.serving.v2_codec import (
    OFF_LOOP_BYTES,
    array_from_data,
    array_from_raw,
    check_declared,
    check_id,
    check_shape,
    data_for_json,
    raw_bytes,
)
from modelport.serving.v2_metadata import EXTENSIONS, metadata, triton_config
from modelport.types import DataType, Signature, Tensors

__all__ = ["InferFirst", "routes"]

_HEADER_LENGTH = "inference-header-content-length"
_INFER_HEADERS = (b"content-length", b"content-encoding", _HEADER_LENGTH.encode())
_JSON_HEADERS = ((b"content-type", b"application/json"),)
_BINARY_HEADERS = ((b"content-type", b"application/octet-stream"),)
# Binary responses from this size up are sent in pieces rather than joined into one copy.
_JOIN_LIMIT = 1 << 20
# The infer routes' paths, as Starlette matches ``{name}`` and ``{version}``: [^/]+.
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class InferEndpoint:
    """``POST .../infer`` as a plain ASGI endpoint.

    The hot path of the server: for a tiny model, Starlette's ``Request``/``Response``
    objects and per-request exception wrapper cost about as much as parsing and inference
    together (bench/RESULTS.md), so this endpoint reads ``receive`` and calls ``send``
    itself. Routing, error responses (a ``ModelportError`` raised here goes to the app's
    handler) and method checks stay Starlette's.
    """

    def __init__(self, manager: ModelManager, max_body: int) -> None:
        self._manager = manager
        self._max_body = max_body
        # A body with no binary part is all JSON, which takes ~11 times its size to decode.
        self._max_json = min(max_body, manager.config.json_limit())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        name, version = params["name"], params.get("version")
        manager = self._manager
        declared, encoding, header_length = header_values(scope["headers"], _INFER_HEADERS)
        signature: Signature | None = None
        if header_length is None:  # all JSON: ``infer`` judges the tensors once typed
            manager.served(name)  # an unknown model is a 404 whatever the body says
        else:
            # Binary inputs are judged by the signature before they are decoded (a dict
            # lookup for the default version; an unknown version is a 404 here too).
            signature = (await manager.deployment(name, version)).signature
        limit = self._max_json if header_length is None else self._max_body
        body = await receive_body(receive, limit, declared, encoding)
        if len(body) < OFF_LOOP_BYTES:
            request = _parse(body, header_length, signature)
        else:
            request = await asyncio.to_thread(_parse, body, header_length, signature)
        del body  # what is left of it is referenced by the tensors that need it
        result, deployment = await manager.infer(
            name, version, request.inputs, request.outputs, "rest_v2", timeout=request.timeout
        )
        header, chunks, headers = _response(request, deployment, result)
        length = len(header) + sum(map(len, chunks))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*headers, (b"content-length", str(length).encode())],
            }
        )
        if not chunks:
            await send({"type": "http.response.body", "body": header})
            return
        if length < _JOIN_LIMIT:
            await send({"type": "http.response.body", "body": b"".join([header, *chunks])})
            return
        for part in [header, *chunks[:-1]]:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": chunks[-1]})


class InferFirst:
    """``app`` with ``POST .../infer`` sent straight to ``InferEndpoint``.

    Starlette's middleware and router cost a tiny model's request about 4 µs of its ~37 µs
    in the app (bench/RESULTS.md); inference skips them. Errors are answered as the app's
    handler answers them; everything else, other methods on these paths included, goes to
    ``app``.
    """

    def __init__(self, app: ASGIApp, manager: ModelManager, max_body: int) -> None:
        self._app = app
        self._endpoint = InferEndpoint(manager, max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                name, version = match.groups()
                scope["path_params"] = (
                    {"name": name} if version is None else {"name": name, "version": version}
                )
                try:
                    await self._endpoint(scope, receive, send)
                except ModelportError as exc:
                    await error_response(exc)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def routes(manager: ModelManager, max_body: int) -> list[Route]:
    """The V2 routes, bound to one manager."""

    async def server_metadata(_: Request) -> Response:
        return json_response(
            {"name": "modelport", "version": __version__, "extensions": EXTENSIONS}
        )

    async def live(_: Request) -> Response:
        return Response(status_code=200)

    async def ready(_: Request) -> Response:
        return Response(status_code=200 if manager.ready() else 400)

    async def model_ready(request: Request) -> Response:
        deployment = await manager.deployment(
            request.path_params["name"], request.path_params.get("version")
        )
        served = manager.served(deployment.name)
        is_ready = served.enabled and deployment.state is State.READY
        return Response(status_code=200 if is_ready else 400)

    async def model_metadata(request: Request) -> Response:
        deployment = await manager.deployment(
            request.path_params["name"], request.path_params.get("version")
        )
        return json_response(metadata(manager, deployment))

    async def model_config(request: Request) -> Response:
        deployment = await manager.deployment(
            request.path_params["name"], request.path_params.get("version")
        )
        return json_response(triton_config(deployment))

    async def repository_index(request: Request) -> Response:
        body = await read_body(request, 1 << 20)
        only_ready = bool(v2_json.json_object(body).get("ready", False)) if body.strip() else False
        rows = [row for row in manager.index() if not only_ready or row["state"] == "READY"]
        return json_response(rows)

    async def repository_load(request: Request) -> Response:
        await manager.load(request.path_params["name"])
        return json_response({})

    async def repository_unload(request: Request) -> Response:
        await manager.unload(request.path_params["name"])
        return json_response({})

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    # ``InferFirst`` answers POSTs to these before the router; the routes still answer
    # other methods with 405 and serve an app used without it.
    infer = InferEndpoint(manager, max_body)
    return [
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{version}/infer", infer, methods=["POST"]),
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route(model, model_metadata),
        Route(version, model_metadata),
        Route(f"{model}/ready", model_ready),
        Route(f"{version}/ready", model_ready),
        Route(f"{model}/config", model_config),
        Route(f"{version}/config", model_config),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
    ]


_NO_PARAMETERS: dict[str, Any] = {}  # read only
_NO_BINARY = memoryview(b"")


@dataclass(slots=True)
class _Request:
    """What an infer request asks for, decoded and checked."""

    inputs: Tensors
    outputs: list[str] | None
    binary_outputs: set[str] | bool
    timeout: float | None
    id: str | None


def _parse(body: bytes, header_length: str | None, signature: Signature | None) -> _Request:
    """An infer request from its body. Pure: runs in a worker thread for large bodies.

    ``signature`` judges binary inputs before they are decoded; it is needed (and given)
    only when the body has a binary part."""
    document, binary = _split_body(body, header_length)
    request_id = check_id(document["id"]) if "id" in document else None
    inputs = _inputs(document, binary, signature)
    parameters = _parameters(document) if "parameters" in document else _NO_PARAMETERS
    outputs, binary_outputs = _requested_outputs(document, parameters)
    return _Request(inputs, outputs, binary_outputs, _timeout(parameters), request_id)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is None:
        return v2_json.request_body(body), _NO_BINARY
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
    return v2_json.json_object(view[:cut]), view[cut:]


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
    document: dict[str, Any], parameters: dict[str, Any]
) -> tuple[list[str] | None, set[str] | bool]:
    all_binary = bool(parameters.get("binary_data_output", False))
    requested = document.get("outputs")
    if not requested:
        return None, all_binary
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
    return names, binary


def _response(
    request: _Request, deployment: Deployment, outputs: Tensors
) -> tuple[bytes, list[bytes], tuple[tuple[bytes, bytes], ...]]:
    """The response's JSON header, its binary chunks and its headers (all but Content-Length).

    Echoes the request ``id`` (checked and bounded) and no request parameters: those are
    options for this server, and response parameters are the server's own (Triton's carry
    sequence state only). Echoing them let 33 KB of gzip come back as a 34 MB response.
    """
    binary = request.binary_outputs
    described = []
    chunks = []
    for name, array in outputs.items():
        datatype = DataType.from_numpy(array.dtype)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype.value,
            "shape": list(array.shape),
        }
        if binary is True or (binary and name in binary):
            chunk = raw_bytes(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = data_for_json(array)
        described.append(entry)
    response: dict[str, Any] = {
        "model_name": deployment.name,
        "model_version": str(deployment.version),
        "outputs": described,
    }
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, chunks, _JSON_HEADERS
    length = (b"inference-header-content-length", str(len(header)).encode())
    return header, chunks, (*_BINARY_HEADERS, length)
