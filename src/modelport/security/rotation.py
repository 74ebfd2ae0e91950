"""Master-key rotation, encrypting what was stored before, and the state of encryption at
rest in a registry.

Rotation re-wraps every data key in ``blob_keys`` from the current master key to a new one,
in one database transaction with its audit entry (``encryption.rotate``). Blobs are not
read or rewritten, so it takes as long as the rows do, whatever the size of the store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from modelport.errors import EncryptionKeyError, InvalidInput
from modelport.registry import schema
from modelport.registry.db import write_transaction
from modelport.registry.store.encrypted import BlobKeys, EncryptedStore
from modelport.registry.store.local import LocalStore, remove_children
from modelport.security import audit
from modelport.security.crypto import MasterKey, master_key

if TYPE_CHECKING:
    from modelport.registry import Registry

__all__ = ["EncryptionStatus", "Sealed", "encrypt_existing", "rotate", "status"]


@dataclass(frozen=True, slots=True)
class EncryptionStatus:
    """What a store holds: encrypted blobs per master key id, and plaintext blobs."""

    key_id: str | None
    encrypted: dict[str, int] = field(default_factory=dict)
    plaintext: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "encrypted": self.encrypted, "plaintext": self.plaintext}


def status(registry: Registry) -> EncryptionStatus:
    """The key id in use (None: encryption off) and what the store holds."""
    current = master_key(registry.settings)
    sealed = BlobKeys(registry.engine).sealed()
    held = [blob.digest for blob in registry.store.list()]
    encrypted = Counter(sealed[d] for d in held if d in sealed)
    return EncryptionStatus(
        key_id=current.key_id if current else None,
        encrypted=dict(sorted(encrypted.items())),
        plaintext=sum(1 for d in held if d not in sealed),
    )


@dataclass(frozen=True, slots=True)
class Sealed:
    """What ``encrypt_existing`` did: blobs encrypted, plaintext cache entries removed,
    and the digests of plaintext blobs found damaged (left as they are)."""

    encrypted: int
    cache_entries_removed: int
    damaged: tuple[str, ...]


def encrypt_existing(registry: Registry) -> Sealed:
    """Encrypt every blob stored in plaintext (see ``EncryptedStore.seal_existing``), then
    remove the plaintext checkout cache of the time before encryption (the local store's
    ``checkouts/`` and ``derived/``, or ``MODELPORT_CACHE_PATH``): its files would outlive
    the plaintext blobs they were made from.

    Raises:
        EncryptionKeyError: no master key is set.
    """
    store = registry.store
    if not isinstance(store, EncryptedStore) or store.master is None:
        raise EncryptionKeyError(
            "encrypting needs a master key: set MODELPORT_ENCRYPTION_KEY (or "
            "MODELPORT_ENCRYPTION_KEY_FILE)"
        )
    count, damaged = store.seal_existing()
    parts: tuple[str, ...]
    if isinstance(store.inner, LocalStore):
        root, parts = store.inner.root, ("checkouts", "derived")
    else:
        root, parts = registry.settings.resolved_cache_path(), ("checkouts", "derived", "blobs")
    removed = sum(remove_children(root / part, lambda _p: True) for part in parts)
    return Sealed(count, removed, damaged)


def rotate(registry: Registry, new: MasterKey) -> int:
    """Re-wrap every data key from the registry's master key to ``new``; how many were.

    All or nothing: one transaction, with its audit entry. Rows already under ``new`` (a
    rotation run twice) are left as they are.

    Raises:
        EncryptionKeyError: no master key is set, or some rows are wrapped under a key that
            is neither (nothing is changed then).
        InvalidInput: ``new`` is the current key.
    """
    old = master_key(registry.settings)
    if old is None:
        raise EncryptionKeyError(
            "rotation needs the current master key: set MODELPORT_ENCRYPTION_KEY (or "
            "MODELPORT_ENCRYPTION_KEY_FILE) to it"
        )
    if old.key_id == new.key_id:
        raise InvalidInput(f"the new master key is the current one ({old.key_id})")
    table = schema.blob_keys
    with write_transaction(registry.engine) as conn:
        rows = conn.execute(
            select(table.c.digest, table.c.wrapped_key, table.c.master_key_id)
        ).all()
        foreign = sorted({r.master_key_id for r in rows} - {old.key_id, new.key_id})
        if foreign:
            raise EncryptionKeyError(
                f"some data keys are wrapped under master key id {', '.join(foreign)}, not "
                f"the current key {old.key_id}; nothing was rotated. Rotate with that key "
                "set first"
            )
        moved = 0
        for row in rows:
            if row.master_key_id != old.key_id:
                continue
            data_key = old.unwrap(row.wrapped_key, row.digest)
            conn.execute(
                update(table)
                .where(table.c.digest == row.digest)
                .values(wrapped_key=new.wrap(data_key, row.digest), master_key_id=new.key_id)
            )
            moved += 1
        audit.record(
            conn,
            "encryption.rotate",
            f"master key {old.key_id}",
            detail={"from": old.key_id, "to": new.key_id, "rewrapped": moved},
        )
    return moved
