"""The blob store seam: digest-keyed storage of version files, with no local paths.

A ``BlobStore`` keeps bytes under their sha256 digest. The registry writes through ``put``
(which computes the digest from the bytes it stores), reads through ``get``, and asks the
store to collect garbage given what the database references. Where runtimes load files
from is a separate concern: the local checkout cache (``checkout.py``).

Two implementations: ``LocalStore`` (a directory; the default) and ``S3Store`` (any
S3-compatible object store).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from modelport.errors import InvalidModel, VerificationFailed

__all__ = [
    "CHUNK",
    "Blob",
    "BlobStore",
    "BlobWriter",
    "FileEntry",
    "GcReport",
    "Readable",
    "References",
    "StoredBlob",
    "hash_file",
    "manifest_key",
    "safe_relative_path",
    "verify_blobs",
]

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version's manifest: relative POSIX path, sha256 hex digest, size."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Blob:
    """What ``BlobStore.put`` stored: the sha256 hex digest of the bytes and their count."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob as ``BlobStore.list`` finds it; ``modified`` is a POSIX timestamp."""

    digest: str
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class References:
    """What the database references: blob digests, and the manifest keys that name the
    checkouts and derived files worth keeping."""

    digests: frozenset[str]
    manifests: frozenset[str]


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a garbage collection removed. ``staging_removed`` counts interrupted pushes
    (staged files, abandoned multipart uploads)."""

    blobs_removed: int = 0
    bytes_freed: int = 0
    staging_removed: int = 0
    checkouts_removed: int = 0
    derived_removed: int = 0

    def __add__(self, other: GcReport) -> GcReport:
        return GcReport(
            self.blobs_removed + other.blobs_removed,
            self.bytes_freed + other.bytes_freed,
            self.staging_removed + other.staging_removed,
            self.checkouts_removed + other.checkouts_removed,
            self.derived_removed + other.derived_removed,
        )


class Readable(Protocol):
    """A stream of bytes: an open binary file, or an S3 response body."""

    def read(self, size: int = -1, /) -> bytes: ...


class BlobWriter(Protocol):
    """The writes of one push: ``put`` each file, then ``publish`` before the database
    commit. Leaving ``BlobStore.writing`` without publishing discards what was staged (as
    far as ``staged`` says)."""

    staged: bool
    """True when ``put`` only stages: nothing is visible until ``publish``, and what was
    not published is gone when the writer ends. False when ``put`` writes the final blob
    at once (an upload); what a push that failed before ``publish`` stored is then an
    orphan for ``collect_garbage``."""

    def put(self, source: Readable) -> Blob:
        """Store the bytes of ``source`` (read from its start) under their digest.

        The digest is computed on the bytes as they are stored; storing bytes already held
        is cheap and refreshes the blob's time (see ``collect_garbage``). Safe to call from
        several threads.

        Raises:
            StorageError: the store refused the write (full, unreachable, no access).
            InvalidModel: the source changed while it was read.
        """
        ...

    def put_sealed(self, digest: str, source: Readable) -> None:
        """Store ``source``'s bytes under ``digest``, which they do *not* hash to: an
        encryption of the blob whose plaintext the caller hashed (``store.encrypted``; no
        other caller). Published like ``put``'s blobs; a blob already held is kept.

        Raises:
            StorageError: the store refused the write.
        """
        ...

    def replace_sealed(self, digest: str, source: Readable) -> None:
        """Replace the blob held under ``digest`` with ``source``'s bytes, atomically (a
        reader sees the old bytes or the new, never a mix): its plaintext sealed, by
        ``encryption encrypt-existing`` only.

        Raises:
            StorageError: the store refused the write.
        """
        ...

    def publish(self, digests: Iterable[str]) -> None:
        """Make what was put visible, right before the push commits: every blob in
        ``digests`` is then held, and a garbage collection keeps it long enough to see the
        commit.

        Raises:
            StorageError: a blob is gone (a garbage collection ran meanwhile); push again.
        """
        ...


class BlobStore(Protocol):
    """Digest-keyed storage of version files.

    Blobs are immutable: the key of a blob is the sha256 of its bytes, so two writers of
    the same key write the same bytes. A store is safe to use from several threads and
    processes at once.
    """

    @property
    def url(self) -> str:
        """Where the store is, for messages (a directory, or ``s3://bucket/prefix``)."""
        ...

    def put(self, source: Readable) -> Blob:
        """Store and publish one blob at once (see ``BlobWriter.put``)."""
        ...

    def get(self, digest: str) -> contextlib.AbstractContextManager[Readable]:
        """A stream of the blob's bytes, as the store holds them (not re-verified here).

        Raises:
            VerificationFailed: the store does not hold the blob.
            StorageError: the store could not be read.
        """
        ...

    def exists(self, digest: str) -> bool: ...

    def delete(self, digest: str) -> None:
        """Remove a blob; nothing happens if it is not there."""
        ...

    def list(self) -> Iterator[StoredBlob]:
        """Every blob the store holds, in no particular order."""
        ...

    def holds_blobs(self) -> bool:
        """Whether the store holds any blob (an empty database with such a store is refused)."""
        ...

    def writing(self) -> contextlib.AbstractContextManager[BlobWriter]:
        """A writer held by a push from its first ``put`` until its database commit: within
        it, a concurrent ``collect_garbage`` does not remove what the push stored."""
        ...

    def collect_garbage(
        self, read_references: Callable[[], References], *, wait: float = 60.0
    ) -> GcReport:
        """Remove blobs no version references, and what interrupted pushes left.

        ``read_references`` reads the database; each store calls it at the moment that
        makes the collection safe against concurrent pushes (see its docstring).

        Raises:
            Unavailable: the store stayed busy for ``wait`` seconds.
        """
        ...


def manifest_key(files: Iterable[FileEntry]) -> str:
    """A digest of a whole manifest, naming its checkout."""
    hasher = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e.path):
        hasher.update(f"{entry.path}\0{entry.digest}\n".encode())
    return hasher.hexdigest()


def hash_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in large chunks."""
    with path.open("rb") as handle:
        return hash_stream(handle)


def hash_stream(stream: Readable) -> tuple[str, int]:
    """sha256 hex digest and size of what ``stream`` yields until its end."""
    hasher = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def verify_blobs(store: BlobStore, files: Iterable[FileEntry]) -> list[str]:
    """Re-hash ``files`` as ``store`` holds them (streamed, never from a local copy);
    one line per problem, empty when all are intact."""
    problems = []
    for entry in files:
        if not store.exists(entry.digest):
            problems.append(f"{entry.path}: missing from the store")
            continue
        try:
            with store.get(entry.digest) as stream:
                digest, size = hash_stream(stream)
        except VerificationFailed as exc:  # an encrypted blob altered or cut short
            problems.append(f"{entry.path}: {exc}")
            continue
        if digest != entry.digest or size != entry.size:
            problems.append(
                f"{entry.path}: content changed (expected sha256 {entry.digest[:12]}…, "
                f"found {digest[:12]}…)"
            )
    return problems


def safe_relative_path(path: str) -> PurePosixPath:
    """``path`` as a relative POSIX path that cannot leave its root, else ``InvalidModel``."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in path:
        raise InvalidModel(f"model file path {path!r} is not a plain relative path")
    return pure


def is_digest(name: str) -> bool:
    """Whether ``name`` looks like a sha256 hex digest (anything else in a store is not ours)."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
