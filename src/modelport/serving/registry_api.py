"""The registry over HTTP: ``/api/v1/...`` on the serving port (docs/registry-api.md).

Records are the dicts ``modelport ... --json`` prints (``ModelVersion.to_dict``,
``ModelSummary.to_dict``). Every registry call runs in a thread as the request's principal
(``acting_as``), so the audit log names the caller. Scopes are the auth wrapper's to
enforce (GET/HEAD read, any other method write, ``POST /api/v1/gc`` admin); what is left
here is what a path cannot say: listings show only the models the caller may see, and a
push names its model in the path so the model grant applies to it.

Files travel in ``registry_files`` (streamed upload and download).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelport.errors import InvalidInput, NotFound
from modelport.registry import Registry
from modelport.registry.records import ModelVersion
from modelport.security.principal import of_request
from modelport.serving import datasets_api, registry_files
from modelport.serving.api_requests import call_as_caller, field, flag, json_body, version_ref
from modelport.serving.http import json_response
from modelport.serving.uploads import Uploads
from modelport.types import ModelRef, validate_alias

__all__ = ["routes"]


def _lineage(registry: Registry, start: ModelVersion) -> list[dict[str, Any]]:
    """``start`` and its ancestors, newest first, as far as they still exist."""
    chain = [start]
    seen = {start.ref}
    while (parent := chain[-1].lineage.parent) is not None and parent not in seen:
        seen.add(parent)
        try:
            chain.append(registry.get(parent))
        except NotFound:  # a deleted parent ends the chain; the last entry names it
            break
    return [
        {
            "ref": record.ref,
            "operation": record.lineage.operation,
            "parent": record.lineage.parent,
            "parameters": record.lineage.parameters,
        }
        for record in chain
    ]


def routes(registry: Registry, *, max_upload_bytes: int) -> list[BaseRoute]:
    """Every ``/api/v1`` route, bound to ``registry``. Uploads abandoned long ago are
    removed now (a server start) and by ``POST /api/v1/gc``."""
    root = registry.settings.home.expanduser() / "uploads"
    uploads = Uploads(root, max_file_bytes=max_upload_bytes)
    uploads.expire()

    async def gc(request: Request) -> Response:
        report = await call_as_caller(request, registry.gc)
        expired = await asyncio.to_thread(uploads.expire)
        return json_response({**dataclasses.asdict(report), "uploads_removed": expired})

    return [
        *_model_routes(registry),
        *_version_routes(registry),
        Route("/api/v1/gc", gc, methods=["POST"]),
        *registry_files.routes(registry, uploads),
        *datasets_api.routes(registry, uploads),
    ]


def _model_routes(registry: Registry) -> list[BaseRoute]:
    async def list_models(request: Request) -> Response:
        principal = of_request(request.scope)
        models = await call_as_caller(request, registry.list_models)
        return json_response([m.to_dict() for m in models if principal.may_see(m.name)])

    async def show_model(request: Request) -> Response:
        name = request.path_params["name"]
        summaries = await call_as_caller(request, registry.list_models)
        versions = await call_as_caller(request, registry.list_versions, name)
        summary = next((s for s in summaries if s.name == name), None)
        return json_response(
            {
                "model": summary.to_dict() if summary else {"name": name},
                "versions": [v.to_dict() for v in versions],
            }
        )

    async def delete_model(request: Request) -> Response:
        name, force = request.path_params["name"], flag(request, "force")
        removed = await call_as_caller(request, lambda: registry.delete_model(name, force=force))
        return json_response({"removed": [v.to_dict() for v in removed]})

    async def model_description(request: Request) -> Response:
        text = field(await json_body(request), "description", str, required=True)
        await call_as_caller(request, registry.set_description, request.path_params["name"], text)
        return json_response({"model": request.path_params["name"], "description": text})

    async def put_alias(request: Request) -> Response:
        body = await json_body(request)
        number = field(body, "version", int, required=True)
        expected = field(body, "expected_version", int)
        name, alias = request.path_params["name"], validate_alias(request.path_params["alias"])
        target = ModelRef(name, version=number)
        record = await call_as_caller(
            request, lambda: registry.set_alias(target, alias, expected_version=expected)
        )
        return json_response(record.to_dict())

    async def delete_alias(request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        await call_as_caller(request, registry.delete_alias, name, alias)
        return Response(status_code=204)

    model = "/api/v1/models/{name}"
    return [
        Route("/api/v1/models", list_models, methods=["GET"]),
        Route(model, show_model, methods=["GET"]),
        Route(model, delete_model, methods=["DELETE"]),
        Route(f"{model}/description", model_description, methods=["PUT"]),
        Route(f"{model}/aliases/{{alias}}", put_alias, methods=["PUT"]),
        Route(f"{model}/aliases/{{alias}}", delete_alias, methods=["DELETE"]),
    ]


def _version_routes(registry: Registry) -> list[BaseRoute]:
    async def show_version(request: Request) -> Response:
        record = await call_as_caller(request, registry.get, version_ref(request))
        return json_response(record.to_dict())

    async def delete_version(request: Request) -> Response:
        ref, force = version_ref(request), flag(request, "force")
        record = await call_as_caller(request, lambda: registry.delete(ref, force=force))
        return json_response(record.to_dict())

    async def lineage(request: Request) -> Response:
        record = await call_as_caller(request, registry.get, version_ref(request))
        chain = await call_as_caller(request, _lineage, registry, record)
        return json_response({"ref": record.ref, "lineage": chain})

    async def verify(request: Request) -> Response:
        record = await call_as_caller(request, registry.get, version_ref(request))
        problems = await call_as_caller(request, registry.verify, record.ref)
        return json_response({"ref": record.ref, "intact": not problems, "problems": problems})

    async def set_tags(request: Request) -> Response:
        body = await json_body(request)
        tags = field(body, "set", dict) or {}
        remove = field(body, "remove", list) or []
        if not all(isinstance(v, str) for v in (*tags.values(), *remove)):
            raise InvalidInput("tag keys and values must be strings")
        ref = version_ref(request)
        record = await call_as_caller(request, lambda: registry.set_tags(ref, tags, remove=remove))
        return json_response(record.to_dict())

    async def version_description(request: Request) -> Response:
        text = field(await json_body(request), "description", str, required=True)
        ref = version_ref(request)
        await call_as_caller(request, registry.set_description, ref, text)
        record = await call_as_caller(request, registry.get, ref)
        return json_response(record.to_dict())

    async def set_metrics(request: Request) -> Response:
        metrics = field(await json_body(request), "metrics", dict, required=True)
        record = await call_as_caller(request, registry.set_metrics, version_ref(request), metrics)
        return json_response(record.to_dict())

    async def set_serving(request: Request) -> Response:
        body = await json_body(request)
        if "serving" not in body:
            raise InvalidInput("request body needs 'serving': the settings, or null to remove")
        settings = field(body, "serving", dict)
        ref = version_ref(request)
        record = await call_as_caller(request, registry.set_serving_settings, ref, settings)
        return json_response(record.to_dict())

    version = "/api/v1/models/{name}/versions/{ref}"
    return [
        Route(version, show_version, methods=["GET"]),
        Route(f"{version}/serving", set_serving, methods=["PUT"]),
        Route(version, delete_version, methods=["DELETE"]),
        Route(f"{version}/lineage", lineage, methods=["GET"]),
        Route(f"{version}/verify", verify, methods=["POST"]),
        Route(f"{version}/tags", set_tags, methods=["PATCH"]),
        Route(f"{version}/description", version_description, methods=["PUT"]),
        Route(f"{version}/metrics", set_metrics, methods=["POST"]),
    ]
