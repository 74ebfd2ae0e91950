"""Files to and from a server's registry API: streamed uploads that hash as they read, and
downloads verified as they are written. Used by ``RemoteRegistry``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson

from modelport.errors import (
    Internal,
    InvalidInput,
    ModelportError,
    NotFound,
    PayloadTooLarge,
    VerificationFailed,
    error_class,
    error_from_code,
)
from modelport.registry.pulling import write_verified
from modelport.registry.sources import refuse_special_files
from modelport.registry.store import FileEntry
from modelport.registry.store.base import CHUNK, Readable

__all__ = ["download", "error_of", "raise_for", "send_file", "upload_paths"]

SHA256_HEADER = "X-Modelport-Sha256"
_BY_STATUS: dict[int, type[ModelportError]] = {404: NotFound, 413: PayloadTooLarge}


def error_of(response: httpx.Response, url: str) -> ModelportError:
    """The error a failed response stands for: by its body's ``code``, else by its status."""
    try:
        body = orjson.loads(response.read())
    except (orjson.JSONDecodeError, httpx.StreamError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return error_from_code(body["code"], str(body.get("error", "")))
    status = response.status_code
    known: type[ModelportError] | None = _BY_STATUS.get(status)
    if status in (401, 403):
        known = error_class("unauthorized" if status == 401 else "forbidden")
    if known is not None:
        return known(f"{url}: HTTP {status} {response.reason_phrase}")
    fallback = InvalidInput if status < 500 else Internal
    return fallback(
        f"{url} answered HTTP {status} {response.reason_phrase}: is it a modelport server?"
    )


def raise_for(response: httpx.Response, url: str) -> None:
    if response.status_code >= 400:
        raise error_of(response, url)


def _chunks(stream: Readable, hasher: hashlib._Hash) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
        yield chunk


def send_file(http: httpx.Client, upload: str, name: str, stream: Readable, size: int) -> None:
    """Stream ``size`` bytes of ``stream`` as file ``name`` of the upload, hashing them on
    the way; the server's digest of what it received must be the same."""
    hasher = hashlib.sha256()
    response = http.put(
        f"/api/v1/uploads/{upload}/files/{quote(name)}",
        content=_chunks(stream, hasher),
        headers={"content-length": str(size), "content-type": "application/octet-stream"},
    )
    raise_for(response, str(http.base_url))
    received = response.json().get("sha256")
    if received != hasher.hexdigest():
        raise VerificationFailed(
            f"the server received {name!r} with sha256 {received}, not the "
            f"{hasher.hexdigest()} sent; it was damaged on the way: push again"
        )


def _files_of(root: Path) -> Iterator[tuple[Path, str]]:
    """Every regular file under directory ``root`` with its relative POSIX path."""
    for directory, _, names in os.walk(root):
        for filename in sorted(names):
            path = Path(directory, filename)
            yield path, path.relative_to(root).as_posix()


def upload_paths(http: httpx.Client, upload: str, paths: list[Path]) -> list[str]:
    """Send each of ``paths`` (files, or directories of files) into the upload under its
    own name; the names, in order, for the push request."""
    names = []
    for path in paths:
        refuse_special_files(path)
        if not path.exists():
            raise InvalidInput(f"no such file or directory: {path}")
        name = path.resolve().name
        if name in names:
            raise InvalidInput(f"two of the paths pushed are named {name!r}; rename one")
        names.append(name)
        members = _files_of(path) if path.is_dir() else [(path, "")]
        for member, relative in members:
            with member.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                target = f"{name}/{relative}" if relative else name
                send_file(http, upload, target, handle, size)
    return names


def download(http: httpx.Client, version_path: str, entry: FileEntry, root: Path, ref: str) -> None:
    """Stream one file of a version into ``root``, verified against its manifest entry."""
    url = f"/api/v1{version_path}/files/{quote(entry.path)}"
    with http.stream("GET", url) as response:
        raise_for(response, str(http.base_url))
        announced = response.headers.get(SHA256_HEADER)
        if announced is not None and announced != entry.digest:
            raise VerificationFailed(
                f"{ref}: the server sent {entry.path!r} as sha256 {announced}, not the "
                f"manifest's {entry.digest}"
            )
        write_verified(root, entry, response.iter_bytes(CHUNK), ref)
