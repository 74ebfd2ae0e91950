"""The local checkout cache: what runtimes load from, and where they keep derived files.

A blob store holds bytes by digest, possibly far away (S3). Runtimes need files at their
relative paths on a local disk. The checkout cache builds those directories::

    blobs/ab/abcdef…      local copies of blobs, verified against their digest on download
    checkouts/<key>/      a version's files at their relative paths, hard-linked to blobs
    derived/<key>/        machine-specific files runtimes derive from a version (optimized
                          graphs, ``LoadOptions.derived_dir``); safe to delete
    staging/              downloads in progress
    gc.lock               checkouts hold it shared, gc exclusive

With the local store, the cache lives in the store's own directory and links from the
store's ``blobs/`` (nothing is copied or downloaded). With a remote store, a blob is
downloaded once per machine: hashed while it is written, renamed into place only when its
digest matches.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from modelport.errors import StorageError, VerificationFailed
from modelport.registry.store.base import (
    BlobStore,
    FileEntry,
    GcReport,
    References,
    is_digest,
    manifest_key,
    safe_relative_path,
)
from modelport.registry.store.local import copy_hashing, file_lock, remove_children

__all__ = ["CheckoutCache"]


class CheckoutCache:
    """Local directories of versions' files, filled from a ``BlobStore``.

    ``blobs`` is where local copies of blobs live; by default ``root/blobs``. Given the
    local store's own blob directory, checkouts link straight from it.
    """

    def __init__(self, root: Path, store: BlobStore, *, blobs: Path | None = None) -> None:
        self.root = root
        self.store = store
        self._blobs = blobs or root / "blobs"
        for directory in (root / "checkouts", root / "staging", self._blobs):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock_path = root / "gc.lock"

    def checkout(self, files: list[FileEntry]) -> Path:
        """A directory holding ``files`` at their relative paths; built once, then reused.

        Raises:
            VerificationFailed: the store lacks a blob, or its bytes do not match the digest.
            StorageError: the store could not be read, or the cache not written.
        """
        final = self.root / "checkouts" / manifest_key(files)
        if final.is_dir():
            return final
        with file_lock(self._lock_path, fcntl.LOCK_SH):
            building = self.root / "checkouts" / f".tmp-{uuid.uuid4().hex}"
            try:
                for entry in files:
                    blob = self._local_blob(entry)
                    target = building / safe_relative_path(entry.path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(blob, target)
                with contextlib.suppress(OSError):
                    building.mkdir(exist_ok=True)  # a version may have no files at all
                    building.rename(final)
            except FileNotFoundError as exc:
                # Damage to a stored model, like a blob whose bytes changed: not a write the
                # store refused.
                raise VerificationFailed(
                    f"a stored file is missing from the artifact store ({exc.filename}); the "
                    "stored model is damaged. Run `modelport verify --all` to see which "
                    "versions are damaged, and push them again"
                ) from exc
            finally:
                shutil.rmtree(building, ignore_errors=True)
        return final

    def derived(self, files: list[FileEntry]) -> Path:
        """The directory where runtimes keep files they derive from the version made of
        ``files``. Not created here: a runtime that derives nothing leaves no trace, and one
        that does creates it (and copes when it cannot, e.g. in a read-only cache).
        ``collect_garbage`` removes it with the version."""
        return self.root / "derived" / manifest_key(files)

    def _local_blob(self, entry: FileEntry) -> Path:
        path = self._blobs / entry.digest[:2] / entry.digest
        if path.is_file():
            return path
        staged = self.root / "staging" / f"download-{uuid.uuid4().hex}"
        try:
            # Made again if gone: a private cache in /dev/shm may be emptied under us.
            staged.parent.mkdir(parents=True, exist_ok=True)
            with self.store.get(entry.digest) as source, staged.open("w+b") as target:
                digest, size = copy_hashing(source, target)
            if (digest, size) != (entry.digest, entry.size):
                raise VerificationFailed(
                    f"{entry.path}: the store's copy ({self.store.url}) does not match its "
                    f"manifest digest (expected sha256 {entry.digest[:12]}…, got "
                    f"{digest[:12]}…); run `modelport verify --all` and push the model again"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.chmod(0o444)
            staged.replace(path)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise StorageError(
                f"cannot write to the checkout cache at {self.root}: {exc.strerror}"
                + ("; free some space or set MODELPORT_CACHE_PATH" if full else "")
            ) from exc
        finally:
            staged.unlink(missing_ok=True)
        return path

    def collect_garbage(
        self, read_references: Callable[[], References], *, wait: float = 60.0
    ) -> GcReport:
        """Remove checkouts, derived files and local blob copies no version references,
        and downloads left by dead processes.

        Raises:
            Unavailable: a checkout held the cache for ``wait`` seconds.
        """
        with file_lock(self._lock_path, fcntl.LOCK_EX, wait):
            references = read_references()
            keep = references.manifests
            checkouts = remove_children(self.root / "checkouts", lambda p: p.name not in keep)
            derived = remove_children(self.root / "derived", lambda p: p.name not in keep)
            remove_children(self.root / "staging", lambda p: p.name.startswith("download-"))
            removed = freed = 0
            for blob in self._blobs.glob("*/*"):
                if is_digest(blob.name) and blob.name not in references.digests:
                    freed += blob.stat().st_size
                    blob.unlink(missing_ok=True)
                    removed += 1
        return GcReport(
            blobs_removed=removed,
            bytes_freed=freed,
            checkouts_removed=checkouts,
            derived_removed=derived,
        )


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)
