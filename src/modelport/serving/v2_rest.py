"""Open Inference Protocol (KServe V2) over REST, with the binary tensor data and model
repository extensions. Translates wire <-> ``Tensors`` and calls the ``ModelManager``."""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport import __version__
from modelport.errors import ModelportError
from modelport.protocols.v2 import json_body
from modelport.protocols.v2.codec import OFF_LOOP_BYTES
from modelport.protocols.v2.metadata import EXTENSIONS
from modelport.protocols.v2.rest import HEADER_LENGTH, encode_response, parse_request
from modelport.security.principal import of_request
from modelport.serving.deployment import State
from modelport.serving.description import metadata, triton_config
from modelport.serving.http import (
    error_response,
    header_values,
    json_response,
    read_body,
    receive_body,
)
from modelport.serving.manager import ModelManager
from modelport.serving.repository_audit import recorded
from modelport.types import Signature

__all__ = ["InferFirst", "routes"]

_INFER_HEADERS = (b"content-length", b"content-encoding", HEADER_LENGTH.encode())
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
            request = parse_request(body, header_length, signature)
        else:
            request = await asyncio.to_thread(parse_request, body, header_length, signature)
        del body  # what is left of it is referenced by the tensors that need it
        result, deployment = await manager.infer(
            name, version, request.inputs, request.outputs, "rest_v2", timeout=request.timeout
        )
        header, chunks, headers = encode_response(
            request, deployment.name, str(deployment.version), result
        )
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
        only_ready = (
            bool(json_body.json_object(body).get("ready", False)) if body.strip() else False
        )
        rows = [row for row in manager.index() if not only_ready or row["state"] == "READY"]
        return json_response(rows)

    async def repository_load(request: Request) -> Response:
        name = request.path_params["name"]
        caller = of_request(request.scope)
        async with recorded(manager.registry, "model.load", name, caller) as detail:
            detail["version"] = (await manager.load(name)).version
        return json_response({})

    async def repository_unload(request: Request) -> Response:
        name = request.path_params["name"]
        async with recorded(manager.registry, "model.unload", name, of_request(request.scope)):
            await manager.unload(name)
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
