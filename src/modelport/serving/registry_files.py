"""Files over the registry API: streamed upload into a new version, streamed download.

A remote push (docs/registry-api.md)::

    POST /api/v1/uploads                                 -> 201 {"upload": ID}
    PUT  /api/v1/uploads/ID/files/PATH   (raw bytes; X-Modelport-Sha256 checked)  -> 201
    POST /api/v1/models/NAME/versions  {"upload": ID, "paths": [...], ...}       -> 201 version

The version is ``Registry.push`` of the received files, so it is checked, hashed into the
store and published in one transaction exactly as a local push is. A download streams the
blob from the store with its size and digest in the headers; a client checks the digest.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from modelport.errors import InvalidInput, NotFound
from modelport.registry import Registry
from modelport.registry.records import Lineage
from modelport.registry.store import BlobStore, FileEntry
from modelport.serving.api_requests import (
    call_as_caller,
    field,
    json_body,
    refuse_unseen,
    strings,
    version_ref,
)
from modelport.serving.http import json_response
from modelport.serving.uploads import Uploads, relative_path
from modelport.types import Signature

__all__ = ["DOWNLOAD_CHUNK", "SHA256_HEADER", "blob_chunks", "digest_headers", "routes"]

SHA256_HEADER = "X-Modelport-Sha256"
DOWNLOAD_CHUNK = 1 << 20


def digest_headers(entry: FileEntry) -> dict[str, str]:
    sha = base64.b64encode(bytes.fromhex(entry.digest)).decode()
    return {
        "Content-Length": str(entry.size),
        "Digest": f"sha-256={sha}",
        SHA256_HEADER: entry.digest,
        "Content-Type": "application/octet-stream",
    }


async def blob_chunks(store: BlobStore, digest: str) -> AsyncIterator[bytes]:
    """The blob's bytes, read in a thread a chunk at a time (never the whole file)."""
    opened = store.get(digest)
    stream = await asyncio.to_thread(opened.__enter__)
    try:
        while chunk := await asyncio.to_thread(stream.read, DOWNLOAD_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(opened.__exit__, None, None, None)


def _lineage(body: dict[str, Any]) -> Lineage | None:
    given = field(body, "lineage", dict)
    if not given:
        return None
    parent, operation = given.get("parent"), given.get("operation")
    parameters = given.get("parameters") or {}
    if not all(isinstance(v, (str, type(None))) for v in (parent, operation)) or not isinstance(
        parameters, dict
    ):
        raise InvalidInput(
            '\'lineage\' must be {"parent": "name@N", "operation": str, "parameters": {}}'
        )
    return Lineage(parent, operation, parameters)


def _signature(body: dict[str, Any]) -> Signature | None:
    given = field(body, "signature", dict)
    if not given:
        return None
    try:
        return Signature.from_dict(given)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"'signature' is not a signature ({exc!r}); write "
            '{"inputs": [{"name": ..., "datatype": "FP32", "shape": [-1, 4]}], "outputs": [...]}'
        ) from None


def _push_arguments(body: dict[str, Any], files: Path) -> dict[str, Any]:
    """``Registry.push`` keyword arguments from a push request's body."""
    paths = strings(body, "paths")
    if not paths:
        raise InvalidInput(
            "'paths' must list the model's paths in the upload, the model first "
            '(e.g. ["iris.onnx"], or ["model_dir"] for a directory)'
        )
    example = field(body, "example", str)
    arguments: dict[str, Any] = {
        "path": [files / relative_path(p) for p in paths],
        "aliases": strings(body, "aliases"),
        "tags": field(body, "tags", dict),
        "description": field(body, "description", str) or "",
        "format": field(body, "format", str),
        "trust_pickle": bool(field(body, "trust_pickle", bool)),
        "task": field(body, "task", str),
        "metrics": field(body, "metrics", dict),
        "signature": _signature(body),
        "lineage": _lineage(body),
    }
    if example is not None:
        from modelport.tensorio import read_untyped_tensors

        arguments["example"] = read_untyped_tensors(files / relative_path(example))
    for named in arguments["path"]:
        if not named.exists():
            raise InvalidInput(f"the upload has no file or directory {named.relative_to(files)}")
    return arguments


def routes(registry: Registry, uploads: Uploads) -> list[BaseRoute]:
    """The upload, push and download routes."""

    async def create_upload(_: Request) -> Response:
        upload_id = await asyncio.to_thread(uploads.create)
        return json_response({"upload": upload_id}, 201)

    async def put_file(request: Request) -> Response:
        entry = await uploads.receive_file(
            request.path_params["upload"],
            request.path_params["path"],
            request.receive,
            declared_size=request.headers.get("content-length"),
            expected_sha256=request.headers.get(SHA256_HEADER),
        )
        return json_response({"path": entry.path, "sha256": entry.digest, "size": entry.size}, 201)

    async def discard_upload(request: Request) -> Response:
        await asyncio.to_thread(uploads.discard, request.path_params["upload"])
        return Response(status_code=204)

    async def push(request: Request) -> Response:
        name = request.path_params["name"]
        refuse_unseen(request, name)
        body = await json_body(request)
        upload_id = body.get("upload")
        if not isinstance(upload_id, str):
            raise InvalidInput("request body needs 'upload': the id POST /api/v1/uploads gave")

        def commit() -> dict[str, Any]:
            with uploads.committing(upload_id) as files:
                # The received files are the registry's: linked into the store, not copied.
                pushed = registry.push(name=name, take_files=True, **_push_arguments(body, files))
                return pushed.to_dict()

        return json_response(await call_as_caller(request, commit), 201)

    async def manifest(request: Request) -> Response:
        record = await call_as_caller(request, registry.get, version_ref(request))
        return json_response(
            [{"path": f.path, "sha256": f.digest, "size": f.size} for f in record.files]
        )

    async def download(request: Request) -> Response:
        record = await call_as_caller(request, registry.get, version_ref(request))
        path = request.path_params["path"]
        entry = next((f for f in record.files if f.path == path), None)
        if entry is None:
            listed = ", ".join(f.path for f in record.files[:10])
            raise NotFound(f"{record.ref} has no file {path!r}; it has: {listed}")
        headers = digest_headers(entry)
        if request.method == "HEAD":
            return Response(headers=headers)
        # Opened before the response starts: a blob missing from the store is a clean error.
        if not await asyncio.to_thread(registry.store.exists, entry.digest):
            raise NotFound(
                f"{record.ref}: file {path!r} is missing from the store; run modelport verify"
            )
        return StreamingResponse(blob_chunks(registry.store, entry.digest), headers=headers)

    version = "/api/v1/models/{name}/versions/{ref}"
    return [
        Route("/api/v1/uploads", create_upload, methods=["POST"]),
        Route("/api/v1/uploads/{upload}", discard_upload, methods=["DELETE"]),
        Route("/api/v1/uploads/{upload}/files/{path:path}", put_file, methods=["PUT"]),
        Route("/api/v1/models/{name}/versions", push, methods=["POST"]),
        Route(f"{version}/files", manifest, methods=["GET"]),
        Route(f"{version}/files/{{path:path}}", download, methods=["GET"]),
    ]
