"""Encryption at rest: a ``BlobStore`` that seals every blob it stores, around any store.

Blobs stay keyed by the digest of their *plaintext*, so manifests, dedup and ``verify`` are
unchanged. Each new blob gets a random data key; the key, wrapped under the master key
(``security.crypto``), is one row of ``blob_keys``, and the bytes are sealed in the
chunked format of ``security.envelope``.

Rules that keep rows and blobs consistent across processes:

- A row is committed *before* its blob is stored, and a blob already held is never
  replaced, so every sealed blob has its row. Two pushes of the same new file agree on one
  data key: the second finds the first one's row and re-seals its bytes under that key.
- A blob with no row is plaintext (stored before encryption was on) and is read as it is.
- gc removes rows whose blob is unreferenced and gone, and only rows older than the gc
  itself (minus the store's grace period), so an in-flight push keeps its row.

Reading a sealed blob without the master key, or with another one, is
``EncryptionKeyError`` naming the key id expected; sealed bytes that were altered are
``VerificationFailed``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select, update

from modelport.errors import EncryptionKeyError
from modelport.registry import schema
from modelport.registry.db import read_transaction, write_transaction
from modelport.registry.store.base import (
    Blob,
    BlobStore,
    BlobWriter,
    GcReport,
    Readable,
    References,
    StoredBlob,
)
from modelport.security.crypto import KEY_BYTES, MasterKey
from modelport.security.envelope import Opened, looks_sealed, seal

__all__ = ["BlobKeys", "EncryptedStore", "KeyRow"]


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One row of ``blob_keys``: a blob's data key, wrapped under ``master_key_id``."""

    digest: str
    wrapped_key: str
    master_key_id: str


class BlobKeys:
    """The ``blob_keys`` table of a registry database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def lookup(self, digest: str) -> KeyRow | None:
        table = schema.blob_keys
        with read_transaction(self.engine) as conn:
            row = conn.execute(
                select(table.c.wrapped_key, table.c.master_key_id).where(table.c.digest == digest)
            ).first()
        return None if row is None else KeyRow(digest, row.wrapped_key, row.master_key_id)

    def claim(self, ours: KeyRow) -> KeyRow:
        """Record ``ours`` unless a row for its digest exists; the row in force after.

        A row under another master key is replaced: its blob is not held (the caller
        checked), so nothing sealed under it can be lost."""
        table = schema.blob_keys
        with write_transaction(self.engine) as conn:
            found = conn.execute(
                select(table.c.wrapped_key, table.c.master_key_id).where(
                    table.c.digest == ours.digest
                )
            ).first()
            values = {"wrapped_key": ours.wrapped_key, "master_key_id": ours.master_key_id}
            if found is None:
                conn.execute(
                    insert(table).values(digest=ours.digest, created_at=datetime.now(UTC), **values)
                )
                return ours
            if found.master_key_id != ours.master_key_id:
                conn.execute(update(table).where(table.c.digest == ours.digest).values(**values))
                return ours
            return KeyRow(ours.digest, found.wrapped_key, found.master_key_id)

    def any(self) -> bool:
        with read_transaction(self.engine) as conn:
            return conn.execute(select(schema.blob_keys.c.digest).limit(1)).first() is not None

    def sealed(self) -> dict[str, str]:
        """Every row's digest and master key id."""
        table = schema.blob_keys
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(table.c.digest, table.c.master_key_id)).all()
        return {row.digest: row.master_key_id for row in rows}

    def forget(self, keep: frozenset[str], before: datetime, held: Callable[[str], bool]) -> int:
        """Remove rows made before ``before`` whose digest is not in ``keep`` and whose blob
        is not ``held``; how many went."""
        table = schema.blob_keys
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(table.c.digest, table.c.created_at).where(table.c.created_at < before)
            ).all()
        doomed = [r.digest for r in rows if r.digest not in keep and not held(r.digest)]
        if doomed:
            with write_transaction(self.engine) as conn:
                conn.execute(delete(table).where(table.c.digest.in_(doomed)))
        return len(doomed)

    def count_by_master(self) -> dict[str, int]:
        table = schema.blob_keys
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(table.c.master_key_id, func.count()).group_by(table.c.master_key_id)
            ).all()
        return {str(key_id): int(count) for key_id, count in rows}


class EncryptedStore:
    """``inner`` with every new blob sealed under ``master`` (see the module docstring).

    Without a master key (None) it stores plaintext as ``inner`` would and refuses to read
    sealed blobs. ``grace`` is the inner store's gc grace period, in seconds.
    """

    def __init__(
        self, inner: BlobStore, keys: BlobKeys, master: MasterKey | None, *, grace: float = 0.0
    ) -> None:
        self.inner = inner
        self.keys = keys
        self.master = master
        self._grace = grace

    @property
    def url(self) -> str:
        return self.inner.url

    def put(self, source: Readable) -> Blob:
        with self.writing() as writer:
            blob = writer.put(source)
            writer.publish([blob.digest])
        return blob

    @contextlib.contextmanager
    def get(self, digest: str) -> Iterator[Readable]:
        row = self.keys.lookup(digest)
        if row is None:
            with self.inner.get(digest) as plain:
                yield plain
            return
        data_key = self.data_key(row)
        with self.inner.get(digest) as sealed:
            yield Opened(sealed, data_key, digest)

    def data_key(self, row: KeyRow) -> bytes:
        """The data key of ``row``'s blob.

        Raises:
            EncryptionKeyError: no master key, or not the one the row is wrapped under.
            VerificationFailed: the wrapped key was altered.
        """
        if self.master is None:
            raise EncryptionKeyError(
                f"blob {row.digest[:12]}… in {self.url} is encrypted and no master key is "
                "set; set MODELPORT_ENCRYPTION_KEY (or MODELPORT_ENCRYPTION_KEY_FILE) to the "
                f"master key with id {row.master_key_id}"
            )
        if row.master_key_id != self.master.key_id:
            raise EncryptionKeyError(
                f"blob {row.digest[:12]}… in {self.url} is encrypted under master key id "
                f"{row.master_key_id}, but the key set has id {self.master.key_id}; set "
                f"MODELPORT_ENCRYPTION_KEY to key {row.master_key_id} (after a rotation, "
                "the new key)"
            )
        return self.master.unwrap(row.wrapped_key, row.digest)

    def exists(self, digest: str) -> bool:
        return self.inner.exists(digest)

    def delete(self, digest: str) -> None:
        self.inner.delete(digest)

    def list(self) -> Iterator[StoredBlob]:
        return self.inner.list()

    def holds_blobs(self) -> bool:
        return self.inner.holds_blobs()

    @contextlib.contextmanager
    def writing(self) -> Iterator[BlobWriter]:
        with self.inner.writing() as writer:
            yield writer if self.master is None else _SealingWriter(self, self.master, writer)

    def seal_existing(self) -> tuple[int, tuple[str, ...]]:
        """Encrypt the blobs held in plaintext (stored before encryption was on), each under
        a new data key; how many, and the digests of plaintext blobs found damaged (left
        as they are).

        Each blob's row is committed before its bytes are replaced (atomically), so an
        interruption loses nothing: a blob whose row exists but whose bytes are still
        plaintext is finished by the next run. Between the two steps a concurrent load of
        that blob fails once with ``VerificationFailed``; run it while nothing loads.

        Raises:
            EncryptionKeyError: no master key is set (or rows are under another key).
        """
        if self.master is None:
            raise EncryptionKeyError(
                "encrypting needs a master key: set MODELPORT_ENCRYPTION_KEY (or "
                "MODELPORT_ENCRYPTION_KEY_FILE)"
            )
        sealed = self.keys.sealed()
        done: list[str] = []
        damaged: list[str] = []
        with self.inner.writing() as writer:
            for blob in list(self.inner.list()):
                row = self.keys.lookup(blob.digest) if blob.digest in sealed else None
                if row is not None:
                    with self.inner.get(blob.digest) as stream:
                        if looks_sealed(stream):
                            continue
                if self._seal_one(writer, blob.digest, row):
                    done.append(blob.digest)
                else:
                    damaged.append(blob.digest)
        return len(done), tuple(damaged)

    def _seal_one(self, writer: BlobWriter, digest: str, row: KeyRow | None) -> bool:
        assert self.master is not None
        data_key = os.urandom(KEY_BYTES) if row is None else self.data_key(row)
        with tempfile.TemporaryFile(prefix="modelport-sealed-") as spool:
            with self.inner.get(digest) as plain:
                found, _ = seal(plain, spool, data_key)
            if found != digest:
                return False
            if row is None:
                ours = KeyRow(digest, self.master.wrap(data_key, digest), self.master.key_id)
                if self.keys.claim(ours) != ours:
                    return True  # another run sealed it meanwhile
            spool.seek(0)
            writer.replace_sealed(digest, spool)
        return True

    def collect_garbage(
        self, read_references: Callable[[], References], *, wait: float = 60.0
    ) -> GcReport:
        """The inner store's gc, then the rows of the blobs it removed (see the module
        docstring for why rows younger than the gc are kept)."""
        started = datetime.now(UTC) - timedelta(seconds=self._grace)
        seen: list[References] = []

        def reading() -> References:
            seen.append(read_references())
            return seen[-1]

        report = self.inner.collect_garbage(reading, wait=wait)
        if seen:
            self.keys.forget(seen[-1].digests, started, self.inner.exists)
        return report


class _SealingWriter:
    """A push's writes, sealed: each file is sealed to a local spool while its plaintext is
    hashed, its key row claimed, and the spool handed to the inner writer."""

    def __init__(self, store: EncryptedStore, master: MasterKey, inner: BlobWriter) -> None:
        self._store = store
        self._master = master
        self._inner = inner
        self.staged = inner.staged

    def put(self, source: Readable) -> Blob:
        data_key = os.urandom(KEY_BYTES)
        with tempfile.TemporaryFile(prefix="modelport-sealed-") as spool:
            digest, size = seal(source, spool, data_key)
            if self._store.inner.exists(digest):
                # Held already (sealed, or plaintext from before encryption): kept as it is;
                # ``publish`` refreshes it.
                return Blob(digest, size)
            ours = KeyRow(digest, self._master.wrap(data_key, digest), self._master.key_id)
            row = self._store.keys.claim(ours)
            spool.seek(0)
            if row == ours:
                self._inner.put_sealed(digest, spool)
                return Blob(digest, size)
            # Another push of the same file claimed the row first: seal under its key.
            with tempfile.TemporaryFile(prefix="modelport-sealed-") as again:
                seal(Opened(spool, data_key, digest), again, self._store.data_key(row))
                again.seek(0)
                self._inner.put_sealed(digest, again)
        return Blob(digest, size)

    def put_sealed(self, digest: str, source: Readable) -> None:
        self._inner.put_sealed(digest, source)

    def replace_sealed(self, digest: str, source: Readable) -> None:
        self._inner.replace_sealed(digest, source)

    def publish(self, digests: Iterable[str]) -> None:
        self._inner.publish(digests)
