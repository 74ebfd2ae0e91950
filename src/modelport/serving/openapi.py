"""The OpenAPI 3.1 document of every REST route (``/openapi.json``) and a page listing them
(``/docs``: self-contained HTML, nothing fetched from a network).

``OPERATIONS`` is the one table, keyed by (method, path) as Starlette spells the route
(``{path:path}`` included). A route added to the app without an entry here is still
listed, marked ``x-modelport-undescribed``, and fails
tests/test_registry_api.py::test_openapi_describes_every_route: add its line. The
document lists the routes the running app has (an entry of the table
that this server lacks is left out).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from modelport import __version__
from modelport.serving.http import json_response

__all__ = ["OPERATIONS", "UNDESCRIBED", "Operation", "document", "route_keys", "routes"]


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it does, and what it takes and answers."""

    summary: str
    tag: str
    body: str | None = None
    """The request body's media type: ``application/json`` (schema ``schema``) or raw bytes."""
    schema: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    returns: str = "application/json"
    open: bool = False
    """Answered without a key even when auth is on (plain liveness)."""


JSON = "application/json"
BYTES = "application/octet-stream"
_V2 = "V2 inference"
_TF = "TF Serving"
_REG = "Registry API"
_DS = "Datasets"
_SERVER = "Server"


def _obj(**properties: str) -> dict[str, Any]:
    return {"type": "object", "properties": {k: {"type": v} for k, v in properties.items()}}


_PUSH = _obj(
    upload="string", paths="array", aliases="array", tags="object", description="string",
    format="string", trust_pickle="boolean", task="string", signature="object",
    example="string", metrics="object", lineage="object",
)  # fmt: skip
_V2_INFER = Operation("Run inference (JSON or binary tensor extension)", _V2, body=JSON)
_V2_META = Operation("Model metadata: platform, versions, inputs and outputs", _V2)
_V2_READY = Operation("Whether the model (version) is ready: 200, else 400", _V2, returns="")
_V2_CONFIG = Operation("Triton-style model configuration", _V2)
_TF_STATUS = Operation("Model version status", _TF)
_TF_META = Operation("Signature definitions", _TF)
_TF_PREDICT = Operation("Predict (row or columnar JSON)", _TF, body=JSON)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v2/models/{name}/infer"): _V2_INFER,
    ("POST", "/v2/models/{name}/versions/{version}/infer"): _V2_INFER,
    ("GET", "/v2"): Operation("Server metadata: name, version, extensions", _SERVER),
    ("GET", "/v2/health/live"): Operation("Liveness", _SERVER, returns="", open=True),
    ("GET", "/v2/health/ready"): Operation(
        "Readiness: 200 once every model is loaded", _SERVER, returns=""
    ),
    ("GET", "/v2/models/{name}"): _V2_META,
    ("GET", "/v2/models/{name}/versions/{version}"): _V2_META,
    ("GET", "/v2/models/{name}/ready"): _V2_READY,
    ("GET", "/v2/models/{name}/versions/{version}/ready"): _V2_READY,
    ("GET", "/v2/models/{name}/config"): _V2_CONFIG,
    ("GET", "/v2/models/{name}/versions/{version}/config"): _V2_CONFIG,
    ("POST", "/v2/repository/index"): Operation(
        "Repository index: served models and their state", "Repository", body=JSON
    ),
    ("POST", "/v2/repository/models/{name}/load"): Operation(
        "(Re)load a model from the registry, following its alias", "Repository"
    ),
    ("POST", "/v2/repository/models/{name}/unload"): Operation("Unload a model", "Repository"),
    ("GET", "/v1/models/{name}"): _TF_STATUS,
    ("GET", "/v1/models/{name}/versions/{version}"): _TF_STATUS,
    ("GET", "/v1/models/{name}/labels/{label}"): _TF_STATUS,
    ("GET", "/v1/models/{name}/metadata"): _TF_META,
    ("GET", "/v1/models/{name}/versions/{version}/metadata"): _TF_META,
    ("GET", "/v1/models/{name}/labels/{label}/metadata"): _TF_META,
    ("POST", "/v1/models/{name}:predict"): _TF_PREDICT,
    ("POST", "/v1/models/{name}/versions/{version}:predict"): _TF_PREDICT,
    ("POST", "/v1/models/{name}/labels/{label}:predict"): _TF_PREDICT,
    ("GET", "/v1/models/{rest:path}"): Operation(
        "Any other TF Serving path: 404 naming the supported ones", _TF
    ),
    ("POST", "/v1/models/{rest:path}"): Operation(
        "Any other TF Serving path (:classify, :regress): 404 naming the supported ones", _TF
    ),
    ("GET", "/metrics"): Operation("Prometheus metrics", _SERVER, returns="text/plain"),
    ("GET", "/api/v1/models"): Operation("List the models the caller may see", _REG),
    ("GET", "/api/v1/models/{name}"): Operation("A model and its versions", _REG),
    ("DELETE", "/api/v1/models/{name}"): Operation(
        "Delete a model and every version (?force=true: even with aliases)", _REG
    ),
    ("PUT", "/api/v1/models/{name}/description"): Operation(
        "Set the model's description", _REG, body=JSON, schema=_obj(description="string")
    ),
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"): Operation(
        "Point an alias at a version; expected_version makes it compare-and-set (409)",
        _REG,
        body=JSON,
        schema=_obj(version="integer", expected_version="integer"),
    ),
    ("DELETE", "/api/v1/models/{name}/aliases/{alias}"): Operation(
        "Remove an alias", _REG, status=204, returns=""
    ),
    ("POST", "/api/v1/models/{name}/versions"): Operation(
        "Push a new version made of an upload's files", _REG, body=JSON, schema=_PUSH, status=201
    ),
    ("GET", "/api/v1/models/{name}/versions/{ref}"): Operation("A version (number or alias)", _REG),
    ("DELETE", "/api/v1/models/{name}/versions/{ref}"): Operation(
        "Delete a version (?force=true: even with aliases)", _REG
    ),
    ("GET", "/api/v1/models/{name}/versions/{ref}/files"): Operation(
        "The version's manifest: path, sha256, size", _REG
    ),
    ("GET", "/api/v1/models/{name}/versions/{ref}/files/{path:path}"): Operation(
        "Download one file, streamed (Content-Length, Digest, X-Modelport-Sha256)",
        _REG,
        returns=BYTES,
    ),
    ("GET", "/api/v1/models/{name}/versions/{ref}/lineage"): Operation(
        "The version and its ancestors", _REG
    ),
    ("POST", "/api/v1/models/{name}/versions/{ref}/verify"): Operation(
        "Re-hash the stored files against the manifest", _REG
    ),
    ("PATCH", "/api/v1/models/{name}/versions/{ref}/tags"): Operation(
        "Set and remove tags", _REG, body=JSON, schema=_obj(set="object", remove="array")
    ),
    ("PUT", "/api/v1/models/{name}/versions/{ref}/description"): Operation(
        "Set the version's description", _REG, body=JSON, schema=_obj(description="string")
    ),
    ("POST", "/api/v1/models/{name}/versions/{ref}/metrics"): Operation(
        "Merge metrics into the version's", _REG, body=JSON, schema=_obj(metrics="object")
    ),
    ("PUT", "/api/v1/models/{name}/versions/{ref}/serving"): Operation(
        "Store serving settings on the version (null removes them)",
        _REG,
        body=JSON,
        schema=_obj(serving="object"),
    ),
    ("GET", "/api/v1/datasets"): Operation("List datasets", _DS),
    ("POST", "/api/v1/datasets/{name}/versions"): Operation(
        "Push an upload's file or folder as the next version (profiled by the server)",
        _DS,
        body=JSON,
        status=201,
        schema=_obj(
            upload="string",
            path="string",
            label="string",
            description="string",
            license="string",
            aliases="array",
            tags="object",
            source="string",
        ),
    ),
    ("POST", "/api/v1/datasets/{name}/builtin"): Operation(
        "Store one of scikit-learn's bundled sets as the next version",
        _DS,
        body=JSON,
        status=201,
        schema=_obj(which="string"),
    ),
    ("POST", "/api/v1/datasets/{name}/versions/{ref}/split"): Operation(
        "A new version with named splits of this one's rows",
        _DS,
        body=JSON,
        status=201,
        schema=_obj(
            fractions="object",
            seed="integer",
            stratify="string",
            name="string",
            aliases="array",
        ),
    ),
    ("GET", "/api/v1/datasets/{name}"): Operation("A dataset and its versions", _DS),
    ("PUT", "/api/v1/datasets/{name}/aliases/{alias}"): Operation(
        "Point a dataset alias at a version", _DS, body=JSON, schema=_obj(version="integer")
    ),
    ("GET", "/api/v1/datasets/{name}/versions/{ref}"): Operation(
        "A dataset version (number or alias, optionally :split)", _DS
    ),
    ("DELETE", "/api/v1/datasets/{name}/versions/{ref}"): Operation(
        "Delete a dataset version (?force=true: even with aliases)", _DS
    ),
    ("POST", "/api/v1/datasets/{name}/versions/{ref}/verify"): Operation(
        "Re-hash the dataset version's stored files", _DS
    ),
    ("GET", "/api/v1/datasets/{name}/versions/{ref}/files/{path:path}"): Operation(
        "Download one file of a dataset version, streamed", _DS, returns=BYTES
    ),
    ("POST", "/api/v1/uploads"): Operation("Start an upload", _REG, status=201),
    ("DELETE", "/api/v1/uploads/{upload}"): Operation(
        "Discard an upload", _REG, status=204, returns=""
    ),
    ("PUT", "/api/v1/uploads/{upload}/files/{path:path}"): Operation(
        "Send one file, streamed; X-Modelport-Sha256 is checked", _REG, body=BYTES, status=201
    ),
    ("POST", "/api/v1/gc"): Operation(
        "Collect garbage: unreferenced blobs, abandoned uploads", _REG
    ),
    ("GET", "/api/v1/keys"): Operation(
        "API keys (never their secrets); ?all=true: revoked too", _REG
    ),
    ("POST", "/api/v1/keys"): Operation(
        "Create a key; the answer holds the key, shown this once",
        _REG,
        body=JSON,
        status=201,
        schema=_obj(name="string", scope="string", models="array", expires="string", rate="string"),
    ),
    ("DELETE", "/api/v1/keys/{name}"): Operation("Revoke a key", _REG),
    ("GET", "/api/v1/audit"): Operation(
        "The audit log, oldest first (since, model, actor, action, limit)", _REG
    ),
    ("GET", "/api/v1/audit/verify"): Operation(
        "Check the audit log's hash chain (expect_head)", _REG
    ),
    ("GET", "/openapi.json"): Operation("This document", _SERVER),
    ("GET", "/docs"): Operation("The routes, as a page", _SERVER, returns="text/html"),
}


UNDESCRIBED = "x-modelport-undescribed"
"""Marks an operation of a route ``OPERATIONS`` lacks (tests fail on it)."""
_UNDESCRIBED = Operation("(not described yet: add it to serving/openapi.py)", "Undescribed")


def route_keys(app_routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """(method, path) of every route of an app, HEAD left out (it follows GET)."""
    keys = []
    for route in app_routes:
        if isinstance(route, Route):
            keys += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return keys


_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def document(app_routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the operations ``app_routes`` serve."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path in route_keys(app_routes):
        plain = _CONVERTER.sub(r"{\1}", path)
        operation = OPERATIONS.get((method, path))
        if operation is None:  # listed all the same: a route must never be hidden
            spec = _operation(_UNDESCRIBED, plain)
            spec[UNDESCRIBED] = True
        else:
            spec = _operation(operation, plain)
        paths.setdefault(plain, {})[method.lower()] = spec
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelport",
            "version": __version__,
            "description": "Inference (Open Inference Protocol V2, TF Serving) and the model "
            "registry API of a modelport server.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _obj(error="string", code="string"),
            },
        },
        "security": [{"bearer": []}],
    }


def _operation(operation: Operation, path: str) -> dict[str, Any]:
    content: dict[str, Any] | None = {operation.returns: {}} if operation.returns else None
    ok: dict[str, Any] = {"description": "OK"}
    if content:
        ok["content"] = content
    error = {
        "description": 'An error: {"error": message, "code": code}',
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    spec: dict[str, Any] = {
        "summary": operation.summary,
        "tags": [operation.tag],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", path)
        ],
        "responses": {str(operation.status): ok, "default": error},
    }
    if operation.body is not None:
        schema = operation.schema or {"type": "object" if operation.body == JSON else "string"}
        spec["requestBody"] = {"required": True, "content": {operation.body: {"schema": schema}}}
    if operation.open:
        spec["security"] = []
    return spec


def _page(doc: dict[str, Any]) -> str:
    rows = []
    for path, methods in doc["paths"].items():
        for method, spec in methods.items():
            rows.append(
                f"<tr><td>{html.escape(spec['tags'][0])}</td><td><code>{method.upper()}</code>"
                f"</td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(spec['summary'])}</td></tr>"
            )
    rows.sort()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>modelport API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 10px}"
        "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        f"<h1>modelport {html.escape(doc['info']['version'])} API</h1>"
        "<p>Send <code>Authorization: Bearer KEY</code> where the server requires keys. "
        "The whole description: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<table><tr><th>Area</th><th>Method</th><th>Path</th><th>What it does</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def routes() -> list[BaseRoute]:
    """``/openapi.json`` and ``/docs``; built from the app's own routes on first request."""
    built: dict[str, Any] = {}

    def current(request: Request) -> dict[str, Any]:
        if "doc" not in built:
            built["doc"] = document(list(request.app.routes))
        return built["doc"]  # type: ignore[no-any-return]

    async def openapi_json(request: Request) -> Response:
        return json_response(current(request))

    async def docs(request: Request) -> Response:
        return HTMLResponse(_page(current(request)))

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
