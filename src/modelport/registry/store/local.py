"""The local blob store: one read-only file per distinct content, in a directory.

Layout (unchanged since the first release, so existing registries keep working)::

    blobs/ab/abcdef…      one read-only file per distinct content
    staging/<id>/         the files of a push in progress (hashed while copied in)
    gc.lock               pushes and checkouts hold it shared; gc and deletes exclusive

The local checkout cache (``checkout.py``) shares this directory by default: its
``checkouts/`` and ``derived/`` sit beside ``blobs/``, and it links files straight from it.

A push holds the shared lock from its first byte until its DB transaction commits, and a
garbage collection reads which blobs are referenced only once it holds the exclusive lock:
so it never deletes a blob that a push has published, whether that push committed before
gc started or while gc waited for the lock. A process killed mid-push releases its lock
with its life; what it left is an orphan ``gc`` removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from modelport.errors import StorageError, Unavailable, VerificationFailed
from modelport.registry.store.base import (
    CHUNK,
    Blob,
    GcReport,
    Readable,
    References,
    StoredBlob,
    is_digest,
)

__all__ = ["LocalStore", "LocalWriter", "copy_hashing", "file_lock", "remove_children"]


class LocalStore:
    """A blob store in a local directory (see the module docstring for its layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs", "staging"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.lock_path = root / "gc.lock"

    @property
    def url(self) -> str:
        return str(self.root)

    @property
    def blobs(self) -> Path:
        """The directory of blobs; the default checkout cache links its files from it."""
        return self.root / "blobs"

    def _path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def put(self, source: Readable) -> Blob:
        with self.writing() as writer:
            blob = writer.put(source)
            writer.publish([blob.digest])
        return blob

    @contextlib.contextmanager
    def get(self, digest: str) -> Iterator[BinaryIO]:
        try:
            handle = self._path(digest).open("rb")
        except FileNotFoundError:
            raise VerificationFailed(
                f"blob {digest[:12]}… is missing from the artifact store at {self.root}; the "
                "stored model is damaged. Run `modelport verify --all` to see which versions "
                "are damaged, and push them again"
            ) from None
        with handle:
            yield handle

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def list(self) -> Iterator[StoredBlob]:
        for blob in (self.root / "blobs").glob("*/*"):
            if is_digest(blob.name):
                stat = blob.stat()
                yield StoredBlob(blob.name, stat.st_size, stat.st_mtime)

    def holds_blobs(self) -> bool:
        """Whether any file was ever stored here and not collected since."""
        with os.scandir(self.root / "blobs") as prefixes:
            for prefix in prefixes:
                if not prefix.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(prefix.path) as blobs:  # gc leaves emptied prefixes behind
                    if any(blobs):
                        return True
        return False

    @contextlib.contextmanager
    def writing(self) -> Iterator[LocalWriter]:
        """A writer staging into ``staging/<id>/``, holding the shared lock until the
        caller's DB commit (keeping gc away from new blobs); unpublished files are removed."""
        with file_lock(self.lock_path, fcntl.LOCK_SH):
            directory = self.root / "staging" / uuid.uuid4().hex
            directory.mkdir()
            try:
                yield LocalWriter(self, directory)
            finally:
                shutil.rmtree(directory, ignore_errors=True)

    def collect_garbage(
        self, read_references: Callable[[], References], *, wait: float = 60.0
    ) -> GcReport:
        """Remove staging left by dead pushes and unreferenced blobs.

        ``read_references`` is called once the exclusive lock is held, so that the
        references include every push that published files (a push commits before it
        lets go of the shared lock).

        Raises:
            Unavailable: a push or another gc held the store for ``wait`` seconds.
        """
        with file_lock(self.lock_path, fcntl.LOCK_EX, wait):
            references = read_references()
            staging = remove_children(self.root / "staging", lambda _p: True)
            removed = freed = 0
            for blob in self.list():
                if blob.digest not in references.digests:
                    freed += blob.size
                    self.delete(blob.digest)
                    removed += 1
        return GcReport(blobs_removed=removed, bytes_freed=freed, staging_removed=staging)


class LocalWriter:
    """Stages files of one push (copied and hashed in one pass); ``publish`` files them
    under their digests."""

    staged = True

    def __init__(self, store: LocalStore, directory: Path) -> None:
        self._store = store
        self._dir = directory
        self._staged: dict[str, Path] = {}

    def put(self, source: Readable) -> Blob:
        staged = self._dir / uuid.uuid4().hex
        try:
            with staged.open("w+b") as target:
                digest, size = copy_hashing(source, target)
        except OSError as exc:
            raise _write_error(self._store.root, exc) from exc
        self._staged[digest] = staged
        return Blob(digest, size)

    def adopt(self, path: Path) -> Blob:
        """Stage the file at ``path``, which the caller gives up (a file the registry API
        received): hard-linked, not copied, when it is on the store's filesystem, then
        hashed as it is. The caller must not write to it afterwards. Elsewhere it is copied,
        as ``put`` does."""
        staged = self._dir / uuid.uuid4().hex
        try:
            os.link(path, staged)
        except OSError:  # another filesystem, or links not allowed: copy
            with path.open("rb") as source:
                return self.put(source)
        try:
            with staged.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                digest = _hash_mapped(handle.fileno(), size)
                os.fsync(handle.fileno())
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise _write_error(self._store.root, exc) from exc
        self._staged[digest] = staged
        return Blob(digest, size)

    def put_sealed(self, digest: str, source: Readable) -> None:
        """Stage ``source``'s bytes to be published under ``digest``, which they do not hash
        to: an encryption of the blob (``store.encrypted``), whose plaintext the caller
        hashed. Nothing here checks them; ``publish`` files them like any other."""
        staged = self._dir / uuid.uuid4().hex
        try:
            with staged.open("w+b") as target:
                copy_hashing(source, target)
        except OSError as exc:
            raise _write_error(self._store.root, exc) from exc
        self._staged[digest] = staged

    def replace_sealed(self, digest: str, source: Readable) -> None:
        """See ``BlobWriter.replace_sealed``: staged, then renamed over the blob."""
        staged = self._dir / uuid.uuid4().hex
        blob = self._store._path(digest)
        try:
            with staged.open("w+b") as target:
                copy_hashing(source, target)
            staged.chmod(0o444)
            blob.parent.mkdir(parents=True, exist_ok=True)
            staged.replace(blob)
        except OSError as exc:
            raise _write_error(self._store.root, exc) from exc

    def publish(self, digests: Iterable[str]) -> None:
        """Move staged files into the blob area. Identical content is kept once."""
        try:
            for digest in digests:
                blob = self._store._path(digest)
                if blob.exists():
                    # Refresh the time so an old orphan sweep never races a fresh reference.
                    os.utime(blob)
                    continue
                staged = self._staged.get(digest)
                if staged is None:
                    raise StorageError(
                        f"blob {digest[:12]}… vanished from {self._store.root} during the "
                        "push; push again"
                    )
                blob.parent.mkdir(parents=True, exist_ok=True)
                staged.chmod(0o444)
                staged.replace(blob)
        except OSError as exc:
            raise _write_error(self._store.root, exc) from exc


@contextlib.contextmanager
def file_lock(path: Path, mode: int, wait: float = 60.0) -> Iterator[None]:
    """An ``flock`` on ``path`` (shared or exclusive), waited for up to ``wait`` seconds.

    Raises:
        Unavailable: the lock stayed taken.
    """
    with path.open("a") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        "the artifact store is busy (a push or gc is running); try again"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_children(directory: Path, doomed: Callable[[Path], bool]) -> int:
    """Remove the entries of ``directory`` that ``doomed`` names; how many went."""
    if not directory.is_dir():  # stores made before it existed; created on first use
        return 0
    count = 0
    for child in directory.iterdir():
        if doomed(child):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            count += 1
    return count


def _write_error(root: Path, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageError(
            f"no space left for the artifact store at {root} ({exc.strerror}); nothing was stored"
        )
    return StorageError(
        f"cannot write to the artifact store at {root}: {exc.strerror}; nothing was stored"
    )


def copy_hashing(source: Readable, target: BinaryIO) -> tuple[str, int]:
    """Copy ``source`` (from its start) to ``target`` and hash the bytes; fsync the target.

    For an open file, the kernel copies (copy_file_range: no trip through Python buffers,
    as ``cp`` does), and then the copy is hashed through a read-only map of it in one
    ``hashlib`` call. Neither step holds the GIL, so a push that inspects the model in
    another thread at the same time (``registry.staging``) pays for about the longer of the
    two; and what is hashed is what was stored. The map is of our own staged file, which
    nothing else truncates. Any other stream is read, hashed and written chunk by chunk.
    ``target`` must be open for reading too (``w+b``). The fsync puts the bytes on disk
    before any database row points at them.
    """
    fileno = getattr(source, "fileno", None)
    try:
        fd = fileno() if fileno is not None else None
    except (OSError, ValueError):  # io.BytesIO has fileno() but no descriptor
        fd = None
    if fd is None:
        hasher = hashlib.sha256()
        size = 0
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
            target.write(chunk)
            size += len(chunk)
        target.flush()
        digest = hasher.hexdigest()
    else:
        size = _kernel_copy(fd, target.fileno())
        digest = _hash_mapped(target.fileno(), size)
    os.fsync(target.fileno())
    return digest, size


def _hash_mapped(fd: int, size: int) -> str:
    hasher = hashlib.sha256()
    if size:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
            hasher.update(view)  # one call: hashlib lets go of the GIL for all of it
    return hasher.hexdigest()


def _kernel_copy(src: int, dst: int) -> int:
    copied = 0
    try:
        while step := os.copy_file_range(src, dst, 1 << 30, copied, copied):
            copied += step
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while chunk := os.pread(src, CHUNK, copied):  # filesystems without the syscall
            os.pwrite(dst, chunk, copied)
            copied += len(chunk)
    return copied
