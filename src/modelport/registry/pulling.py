"""Copies of a version's files outside the store, verified as they are written: ``pull``
(``modelport pull REF -o DIR``, local or remote) and ``Registry.remote``'s download cache;
and the check of derived copies both registries run for ``verify_derived``."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import uuid
from collections.abc import Iterable
from pathlib import Path

from modelport.errors import StorageError, VerificationFailed
from modelport.registry.store import FileEntry, safe_relative_path
from modelport.registry.store.base import CHUNK
from modelport.runtimes import derived
from modelport.runtimes.derived import DerivedCheck

__all__ = ["check_derived", "copy_verified", "write_verified"]


def write_verified(dest: Path, entry: FileEntry, chunks: Iterable[bytes], source: str) -> None:
    """Write ``chunks`` as file ``entry.path`` under ``dest``, hashing as it goes; the file
    appears (replacing one there) only when its sha256 and size are the manifest's.

    Raises:
        VerificationFailed: the bytes are not the manifest's (nothing is left of them).
        StorageError: ``dest`` could not be written.
    """
    target = dest / safe_relative_path(entry.path)
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
    hasher = hashlib.sha256()
    size = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("xb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if hasher.hexdigest() != entry.digest or size != entry.size:
            raise VerificationFailed(
                f"{source}: file {entry.path!r} arrived as {size} bytes with sha256 "
                f"{hasher.hexdigest()[:12]}…, not the manifest's {entry.size} bytes with "
                f"{entry.digest[:12]}…; it was damaged on the way or in the store: run "
                "modelport verify on the registry, then try again"
            )
        partial.replace(target)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        partial.unlink(missing_ok=True)


def copy_verified(directory: Path, files: Iterable[FileEntry], dest: Path, source: str) -> None:
    """Copy ``files`` from a checkout ``directory`` to ``dest``, each verified on the way."""
    for entry in files:
        path = directory / entry.path
        try:
            handle = path.open("rb")
        except OSError as exc:
            message = f"{source}: cannot read {entry.path!r}: {exc.strerror}"
            raise VerificationFailed(message) from exc
        with handle:
            write_verified(dest, entry, iter(functools.partial(handle.read, CHUNK), b""), source)


def check_derived(derived_dir: Path) -> list[DerivedCheck]:
    """Re-hash every copy of derived files in ``derived_dir``; one that fails is removed
    (the next load builds it again). One result per copy found."""
    results = []
    for directory in derived.copies(derived_dir):
        result = derived.check(directory, digests=True)
        if not result.intact:
            try:
                derived.discard(directory)
            except OSError as exc:
                problem = f"could not remove it ({exc.strerror}); delete {directory}"
                result = dataclasses.replace(result, problems=(*result.problems, problem))
        results.append(result)
    return results
