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
  The bodies are translated by ``protocols.tfserving.codec``.

Errors are ``{"error": "..."}`` with the shared status table of ``http.py``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.errors import NotFound
from modelport.protocols.tfserving.codec import parse_predict, predict_response, signature_def_map
from modelport.serving.deployment import Deployment, State
from modelport.serving.http import json_response, read_body
from modelport.serving.manager import ModelManager

__all__ = ["routes"]

PROTOCOL = "tfserving"
_ADDRESSES = (
    "/v1/models/{name}",
    "/v1/models/{name}/versions/{version}",
    "/v1/models/{name}/labels/{label}",
)

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
        signature_def = signature_def_map(deployment.signature)
        return json_response({"model_spec": spec, "metadata": {"signature_def": signature_def}})

    async def predict(request: Request) -> Response:
        deployment = await addressed(request)
        body = await read_body(request, max_body)
        parsed = parse_predict(body, deployment.signature)
        outputs, deployment = await manager.infer(
            deployment.name, deployment.version, parsed.inputs, None, PROTOCOL
        )
        return json_response(predict_response(parsed, outputs))

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
