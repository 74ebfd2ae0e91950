"""Datasets over the registry API: ``/api/v1/datasets/...`` (docs/registry-api.md).

What a remote user browses and curates: list, versions, a version (``{ref}`` is a number
or an alias, optionally with ``:split``), verify, alias, delete, and the files, streamed
as models' are. Pushing and splitting a dataset over HTTP is not offered yet: they run
where the registry is (``modelport dataset push|split|builtin``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from modelport.errors import NotFound
from modelport.registry import Registry
from modelport.serving.api_requests import call_as_caller, field, flag, json_body
from modelport.serving.http import json_response
from modelport.serving.registry_files import blob_chunks, digest_headers

__all__ = ["routes"]


def _ref(request: Request) -> str:
    return f"{request.path_params['name']}@{request.path_params['ref']}"


def routes(registry: Registry) -> list[BaseRoute]:
    """The dataset routes, bound to ``registry``."""
    datasets = registry.datasets

    async def list_datasets(request: Request) -> Response:
        found = await call_as_caller(request, datasets.list)
        return json_response([d.to_dict() for d in found])

    async def show_dataset(request: Request) -> Response:
        name = request.path_params["name"]
        versions = await call_as_caller(request, datasets.versions, name)
        summaries = await call_as_caller(request, datasets.list)
        summary = next((s for s in summaries if s.name == name), None)
        return json_response(
            {
                "dataset": summary.to_dict() if summary else {"name": name},
                "versions": [v.to_dict() for v in versions],
            }
        )

    async def show_version(request: Request) -> Response:
        record = await call_as_caller(request, datasets.get, _ref(request))
        return json_response(record.to_dict())

    async def delete_version(request: Request) -> Response:
        ref, force = _ref(request), flag(request, "force")
        record = await call_as_caller(request, lambda: datasets.delete(ref, force=force))
        return json_response(record.to_dict())

    async def verify(request: Request) -> Response:
        record = await call_as_caller(request, datasets.get, _ref(request))
        problems = await call_as_caller(request, datasets.verify, record.ref)
        return json_response({"ref": record.ref, "intact": not problems, "problems": problems})

    async def put_alias(request: Request) -> Response:
        number = field(await json_body(request), "version", int, required=True)
        target = f"{request.path_params['name']}@{number}"
        alias = request.path_params["alias"]
        record = await call_as_caller(request, datasets.set_alias, target, alias)
        return json_response(record.to_dict())

    async def download(request: Request) -> Response:
        record = await call_as_caller(request, datasets.get, _ref(request))
        path = request.path_params["path"]
        entry = next((f for f in record.files if f.path == path), None)
        if entry is None:
            raise NotFound(f"dataset {record.ref} has no file {path!r}")
        headers = digest_headers(entry)
        if request.method == "HEAD":
            return Response(headers=headers)
        return StreamingResponse(blob_chunks(registry.store, entry.digest), headers=headers)

    dataset = "/api/v1/datasets/{name}"
    version = f"{dataset}/versions/{{ref}}"
    return [
        Route("/api/v1/datasets", list_datasets, methods=["GET"]),
        Route(dataset, show_dataset, methods=["GET"]),
        Route(f"{dataset}/aliases/{{alias}}", put_alias, methods=["PUT"]),
        Route(version, show_version, methods=["GET"]),
        Route(version, delete_version, methods=["DELETE"]),
        Route(f"{version}/verify", verify, methods=["POST"]),
        Route(f"{version}/files/{{path:path}}", download, methods=["GET"]),
    ]
