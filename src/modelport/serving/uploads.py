"""Streamed uploads of model files: the staging area of the registry API.

A remote push sends its files one request each into an upload (``POST /api/v1/uploads``),
then asks for a version made of them. Each file is written to disk as it arrives, hashed
on the way, never held whole in memory::

    <home>/uploads/<id>/files/<path>     received files, at the paths the client named
    <home>/uploads/<id>/partial/<uuid>   a file still arriving; renamed into files/ when whole
    <home>/uploads/.commit-<id>-<uuid>   an upload being pushed (renamed: one commit wins)

A file cut off mid-way (the client went away, a limit, a digest mismatch) is removed at
once. An upload left alone for ``ttl`` seconds (never committed, its client gone) is
removed by ``expire``, which the server runs at start and ``POST /api/v1/gc`` runs. Several
worker processes share the directory: everything here is a rename or a file of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from modelport.errors import Conflict, InvalidInput, InvalidModel, NotFound, PayloadTooLarge
from modelport.registry.store import FileEntry, safe_relative_path

__all__ = ["UPLOAD_TTL_SECONDS", "Uploads", "relative_path"]

UPLOAD_TTL_SECONDS = 3600.0
"""An upload untouched this long is abandoned: ``expire`` removes it."""

_WRITE_AT = 1 << 20  # bytes gathered before one write+hash in a thread: few thread hand-offs
_ID = re.compile(r"[0-9a-f]{32}")


def relative_path(path: str) -> PurePosixPath:
    """``path`` as a plain relative path inside an upload, else ``InvalidInput`` (a client's
    mistake or attack, not a broken model)."""
    if any(ord(c) < 32 for c in path):
        raise InvalidInput(f"file path {path!r} holds control characters; rename the file")
    try:
        return safe_relative_path(path)
    except InvalidModel as exc:
        raise InvalidInput(
            f"{exc.message}; name files relative to the model's root, without '..'"
        ) from None


class Uploads:
    """The uploads under ``root``; files over ``max_file_bytes`` are refused (413)."""

    def __init__(self, root: Path, *, max_file_bytes: int, ttl: float = UPLOAD_TTL_SECONDS) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.ttl = ttl

    def create(self) -> str:
        """A new, empty upload; its id."""
        upload_id = uuid.uuid4().hex
        for part in ("files", "partial"):
            (self.root / upload_id / part).mkdir(parents=True)
        return upload_id

    def directory(self, upload_id: str) -> Path:
        """The upload's directory, or ``NotFound`` (never committed, expired, or committed)."""
        found = self.root / upload_id
        if not _ID.fullmatch(upload_id) or not found.is_dir():
            raise NotFound(
                f"no upload {upload_id!r} (committed, discarded, or expired after "
                f"{self.ttl:.0f}s untouched); start again with POST /api/v1/uploads"
            )
        return found

    async def receive_file(
        self,
        upload_id: str,
        path: str,
        receive: Receive,
        *,
        declared_size: str | None,
        expected_sha256: str | None,
    ) -> FileEntry:
        """Write the request body arriving on ``receive`` as file ``path`` of the upload.

        The file appears under its path only once whole and, when ``expected_sha256`` is
        given, matching it; a file already there is replaced.

        Raises:
            InvalidInput: a path that is absolute, climbs out (``..``) or is empty.
            PayloadTooLarge: more than ``max_file_bytes``, declared or received.
            InvalidInput: the bytes do not match ``expected_sha256``.
            ClientDisconnect: the client went away; nothing of the file is left.
        """
        relative = relative_path(path)
        directory = self.directory(upload_id)
        if expected_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", expected_sha256):
            raise InvalidInput(
                "X-Modelport-Sha256 must be the file's sha256 as 64 lower-case hex digits"
            )
        limit = self.max_file_bytes
        declared = declared_size or ""
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"file {path!r} of {declared_size} bytes is over the {limit}-byte upload "
                "limit (max_upload_bytes in the server's config)"
            )
        partial = directory / "partial" / uuid.uuid4().hex
        hasher = hashlib.sha256()
        try:
            handle = await asyncio.to_thread(partial.open, "xb")
        except FileNotFoundError:  # committed or discarded since ``directory`` found it
            raise NotFound(f"upload {upload_id} was committed or discarded meanwhile") from None
        size = 0
        try:
            with handle:
                async for chunk in _chunks(receive):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"file {path!r} is over the {limit}-byte upload limit "
                            "(max_upload_bytes in the server's config)"
                        )
                    await asyncio.to_thread(_write, handle, hasher, chunk)
            digest = hasher.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise InvalidInput(
                    f"file {path!r} arrived with sha256 {digest}, not the {expected_sha256} "
                    "the client sent; it was damaged on the way: send it again"
                )
            await asyncio.to_thread(_place, partial, directory, relative)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return FileEntry(relative.as_posix(), digest, size)

    def discard(self, upload_id: str) -> None:
        """Remove an upload and what it received."""
        shutil.rmtree(self.directory(upload_id), ignore_errors=True)

    @contextlib.contextmanager
    def committing(self, upload_id: str) -> Iterator[Path]:
        """The upload's received files, held by this commit alone: the upload is gone when
        the block ends without an error, and back as it was when it raises.

        Raises:
            NotFound: no such upload (or another commit took it first).
            Conflict: a file of it is still arriving.
        """
        directory = self.directory(upload_id)
        if any((directory / "partial").iterdir()):
            raise Conflict(
                f"upload {upload_id} is still receiving a file; commit once every PUT has answered"
            )
        held = self.root / f".commit-{upload_id}-{uuid.uuid4().hex}"
        try:
            directory.rename(held)
        except FileNotFoundError:
            raise NotFound(f"upload {upload_id} was committed or discarded meanwhile") from None
        os.utime(held)  # a rename keeps the old time: ``expire`` must not take a live commit
        try:
            yield held / "files"
        except BaseException:
            with contextlib.suppress(OSError):
                held.rename(directory)
            raise
        shutil.rmtree(held, ignore_errors=True)

    def expire(self, now: float | None = None) -> int:
        """Remove uploads untouched for ``ttl`` seconds (and commits a crash left); how many."""
        if not self.root.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.ttl
        removed = 0
        for entry in self.root.iterdir():
            if _last_touched(entry) < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body in pieces of about ``_WRITE_AT`` bytes."""
    pending: list[bytes] = []
    held = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if body:
            pending.append(body)
            held += len(body)
        if held >= _WRITE_AT or (not more and pending):
            yield b"".join(pending)
            pending, held = [], 0


def _write(handle: BinaryIO, hasher: hashlib._Hash, chunk: bytes) -> None:
    hasher.update(chunk)  # releases the GIL for large chunks
    handle.write(chunk)


def _place(partial: Path, upload: Path, relative: PurePosixPath) -> None:
    final = upload / "files" / relative
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(final)
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        raise InvalidInput(
            f"file {relative.as_posix()!r} clashes with another file of the upload "
            f"({exc.strerror}): a path cannot be both a file and a directory"
        ) from None
    except OSError as exc:  # a name too long for the server's file system, say
        raise InvalidInput(
            f"the server cannot store file {relative.as_posix()[:200]!r}: {exc.strerror}"
        ) from None
    os.utime(upload)  # touched now: ``expire`` measures idleness from here


def _last_touched(entry: Path) -> float:
    """The newest modification time in an upload (a file arriving updates its partial)."""
    newest = 0.0
    with contextlib.suppress(OSError):
        newest = entry.stat().st_mtime
        for child in (entry / "partial").iterdir():
            newest = max(newest, child.stat().st_mtime)
    return newest
