"""Datasets over the registry API: ``/api/v1/datasets/...`` (docs/registry-api.md).

What a remote user browses and curates: list, versions, a version (``{ref}`` is a number
or an alias, optionally with ``:split``), verify, alias, delete, and the files, streamed
as models' are; and what makes versions: a push of an upload's file (``POST
/api/v1/datasets/{name}/versions``, the same uploads as models'), a split, and one of
scikit-learn's bundled sets (``POST /api/v1/datasets/{name}/builtin``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from modelport.errors import InvalidInput, NotFound
from modelport.registry import Registry
from modelport.serving.api_requests import call_as_caller, field, flag, json_body, strings
from modelport.serving.http import json_response
from modelport.serving.registry_files import blob_chunks, digest_headers
from modelport.serving.uploads import Uploads, relative_path

__all__ = ["routes"]


def _ref(request: Request) -> str:
    return f"{request.path_params['name']}@{request.path_params['ref']}"


def _tags(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("tags") or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidInput("'tags' must be an object of strings")
    return value


def routes(registry: Registry, uploads: Uploads) -> list[BaseRoute]:
    """The dataset routes, bound to ``registry``; pushes take their files from ``uploads``."""
    return [*_making_routes(registry, uploads), *_browsing_routes(registry)]


def _making_routes(registry: Registry, uploads: Uploads) -> list[BaseRoute]:
    """What makes a version: a push of an upload's file, a split, a builtin set."""
    datasets = registry.datasets

    async def push(request: Request) -> Response:
        name = request.path_params["name"]
        body = await json_body(request)
        upload_id = field(body, "upload", str, required=True)
        member = relative_path(field(body, "path", str, required=True))
        options = {
            "label": field(body, "label", str),
            "description": field(body, "description", str) or "",
            "license": field(body, "license", str) or "",
            "aliases": strings(body, "aliases"),
            "tags": _tags(body),
            "source": field(body, "source", str),
        }

        def commit() -> dict[str, Any]:
            with uploads.committing(upload_id) as files:
                source = files / member
                if not source.exists():
                    raise InvalidInput(f"upload {upload_id} has no file or folder {member}")
                return datasets.push(source, name, **options).to_dict()

        return json_response(await call_as_caller(request, commit), 201)

    async def split(request: Request) -> Response:
        body = await json_body(request)
        fractions = field(body, "fractions", dict, required=True)
        if not all(isinstance(v, int | float) for v in fractions.values()):
            raise InvalidInput("'fractions' must map split names to numbers")
        seed = field(body, "seed", int) or 0
        stratify, new_name = field(body, "stratify", str), field(body, "name", str)
        aliases, ref = strings(body, "aliases"), _ref(request)

        def make() -> dict[str, Any]:
            made = datasets.split(
                ref, fractions, seed=seed, stratify=stratify, name=new_name, aliases=aliases
            )
            return made.to_dict()

        return json_response(await call_as_caller(request, make), 201)

    async def builtin(request: Request) -> Response:
        body = await json_body(request)
        which = field(body, "which", str, required=True)
        name = request.path_params["name"]
        made = await call_as_caller(request, lambda: datasets.builtin(which, name=name))
        return json_response(made.to_dict(), 201)

    dataset = "/api/v1/datasets/{name}"
    return [
        Route(f"{dataset}/versions", push, methods=["POST"]),
        Route(f"{dataset}/builtin", builtin, methods=["POST"]),
        Route(f"{dataset}/versions/{{ref}}/split", split, methods=["POST"]),
    ]


def _browsing_routes(registry: Registry) -> list[BaseRoute]:
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
