"""The artifact store: content-addressed blobs (sha256), staged writes, and checkouts.

Layout of the local store::

    blobs/ab/abcdef…      one read-only file per distinct content
    staging/<id>/         a push in progress (files hashed while copied in)
    checkouts/<key>/      a version's files at their relative paths, hard-linked to blobs
    derived/<key>/        machine-specific files runtimes derive from a version (optimized
                          graphs); safe to delete
    gc.lock               pushes and checkouts hold it shared; gc and deletes exclusive

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
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from modelport.errors import InvalidModel, StorageError, Unavailable, VerificationFailed

__all__ = [
    "ArtifactStore",
    "FileEntry",
    "LocalStore",
    "References",
    "Staging",
    "hash_file",
    "manifest_key",
]

_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version's manifest: relative POSIX path, sha256 hex digest, size."""

    path: str
    digest: str
    size: int


def manifest_key(files: Iterable[FileEntry]) -> str:
    """A digest of a whole manifest, naming its checkout."""
    hasher = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e.path):
        hasher.update(f"{entry.path}\0{entry.digest}\n".encode())
    return hasher.hexdigest()


def hash_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in large chunks."""
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def safe_relative_path(path: str) -> PurePosixPath:
    """``path`` as a relative POSIX path that cannot leave its root, else ``InvalidModel``."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in path:
        raise InvalidModel(f"model file path {path!r} is not a plain relative path")
    return pure


@dataclass(frozen=True, slots=True)
class References:
    """What the database references: blob digests, and the manifest keys that name the
    checkouts and derived files worth keeping."""

    digests: frozenset[str]
    manifests: frozenset[str]


class Staging(Protocol):
    """Files being written for one push; discarded unless published."""

    def add(self, source: Path, relative: str) -> FileEntry: ...

    def publish(self) -> None: ...


class ArtifactStore(Protocol):
    """Where version files live. The local directory is the default; S3 comes later."""

    def shared_lock(self) -> contextlib.AbstractContextManager[None]: ...

    def staging(self) -> contextlib.AbstractContextManager[Staging]: ...

    def checkout(self, files: list[FileEntry]) -> Path: ...

    def derived(self, files: list[FileEntry]) -> Path: ...

    def verify(self, files: list[FileEntry]) -> list[str]: ...

    def holds_blobs(self) -> bool: ...

    def collect_garbage(
        self, read_references: Callable[[], References], *, wait: float = 60.0
    ) -> GcReport: ...


@dataclass(frozen=True, slots=True)
class GcReport:
    blobs_removed: int
    bytes_freed: int
    staging_removed: int
    checkouts_removed: int
    derived_removed: int


class _LocalStaging:
    def __init__(self, store: LocalStore, directory: Path) -> None:
        self._store = store
        self._dir = directory
        self.entries: list[tuple[FileEntry, Path]] = []

    def add(self, source: Path, relative: str) -> FileEntry:
        """Copy ``source`` in, hashing in the same pass."""
        safe_relative_path(relative)
        target = self._dir / "files" / f"{len(self.entries)}"
        target.parent.mkdir(exist_ok=True)
        try:
            before = source.stat()
            src = source.open("rb")
        except OSError as exc:
            raise InvalidModel(f"cannot read {source}: {exc.strerror}") from exc
        with src, target.open("wb") as dst:
            digest, size = _copy_hashing(src, dst)
        after = source.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise InvalidModel(f"{source} changed while it was being pushed; push it again")
        entry = FileEntry(relative, digest, size)
        self.entries.append((entry, target))
        return entry

    def publish(self) -> None:
        """Move staged files into the blob area. Identical content is kept once."""
        for entry, staged in self.entries:
            blob = self._store.blob_path(entry.digest)
            if blob.exists():
                # Refresh the time so an old orphan sweep never races a fresh reference.
                os.utime(blob)
                continue
            blob.parent.mkdir(parents=True, exist_ok=True)
            staged.chmod(0o444)
            staged.replace(blob)


class LocalStore:
    """An artifact store in a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs", "staging", "checkouts"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._lock_path = root / "gc.lock"

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

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
    def _lock(self, mode: int, wait: float = 60.0) -> Iterator[None]:
        with self._lock_path.open("a") as handle:
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

    @contextlib.contextmanager
    def shared_lock(self) -> Iterator[None]:
        """Held by writers until their DB commit: keeps gc away from new blobs."""
        with self._lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def staging(self) -> Iterator[_LocalStaging]:
        """A staging area; the caller publishes it, and it is removed either way.

        Callers hold ``shared_lock`` around staging *and* their DB commit.
        """
        directory = self.root / "staging" / uuid.uuid4().hex
        directory.mkdir()
        stage = _LocalStaging(self, directory)
        try:
            yield stage
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise StorageError(
                    f"no space left for the artifact store at {self.root} ({exc.strerror}); "
                    "nothing was stored"
                ) from exc
            raise StorageError(
                f"cannot write to the artifact store at {self.root}: {exc.strerror}; "
                "nothing was stored"
            ) from exc
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def checkout(self, files: list[FileEntry]) -> Path:
        """A directory holding ``files`` at their relative paths; built once, then reused."""
        final = self.root / "checkouts" / manifest_key(files)
        if final.is_dir():
            return final
        with self.shared_lock():
            building = self.root / "checkouts" / f".tmp-{uuid.uuid4().hex}"
            try:
                for entry in files:
                    blob = self.blob_path(entry.digest)
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
        that does creates it (and copes when it cannot, e.g. in a read-only store).
        ``collect_garbage`` removes it with the version."""
        return self.root / "derived" / manifest_key(files)

    def verify(self, files: list[FileEntry]) -> list[str]:
        """Re-hash each blob; return one line per problem (empty when all is well)."""
        problems = []
        for entry in files:
            blob = self.blob_path(entry.digest)
            if not blob.exists():
                problems.append(f"{entry.path}: missing from the store")
                continue
            digest, size = hash_file(blob)
            if digest != entry.digest or size != entry.size:
                problems.append(
                    f"{entry.path}: content changed (expected sha256 {entry.digest[:12]}…, "
                    f"found {digest[:12]}…)"
                )
        return problems

    def collect_garbage(
        self, read_references: Callable[[], References], *, wait: float = 60.0
    ) -> GcReport:
        """Remove staging left by dead pushes, unreferenced blobs, and the checkouts and
        derived files of versions no longer referenced.

        ``read_references`` reads the database; it is called once the exclusive lock is
        held, so that the references include every push that published files (a push
        commits before it lets go of the shared lock).

        Raises:
            Unavailable: a push or another gc held the store for ``wait`` seconds.
        """
        with self._lock(fcntl.LOCK_EX, wait):
            references = read_references()
            keep = references.manifests
            staging = _remove_children(self.root / "staging", lambda _p: True)
            checkouts = _remove_children(self.root / "checkouts", lambda p: p.name not in keep)
            derived = _remove_children(self.root / "derived", lambda p: p.name not in keep)
            removed = freed = 0
            for blob in (self.root / "blobs").glob("*/*"):
                if blob.name not in references.digests:
                    freed += blob.stat().st_size
                    blob.unlink()
                    removed += 1
        return GcReport(removed, freed, staging, checkouts, derived)


def _remove_children(directory: Path, doomed: Callable[[Path], bool]) -> int:
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


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` and hash the bytes, at the speed of the slower of the two.

    The kernel copies (copy_file_range: no trip through Python buffers, as ``cp`` does)
    while a second thread hashes the same source through the page cache; hashlib releases
    the GIL, so on two cores a push costs about max(hash, copy) instead of their sum. The
    caller checks the source did not change meanwhile. Then fsync: the bytes are on disk
    before any database row points at them.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="modelport-hash") as hasher:
        hashed = hasher.submit(_hash_stream, src.fileno())
        copied = _kernel_copy(src.fileno(), dst.fileno())
        digest, size = hashed.result()
    if copied != size:
        raise InvalidModel(f"the source changed size while being copied ({copied} != {size})")
    os.fsync(dst.fileno())
    return digest, size


def _hash_stream(fd: int) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        hasher.update(chunk)
        size += len(chunk)
        offset += len(chunk)
    return hasher.hexdigest(), size


def _kernel_copy(src: int, dst: int) -> int:
    copied = 0
    try:
        while step := os.copy_file_range(src, dst, 1 << 30, copied, copied):
            copied += step
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while chunk := os.pread(src, _CHUNK, copied):  # filesystems without the syscall
            os.pwrite(dst, chunk, copied)
            copied += len(chunk)
    return copied


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)
