"""Where version files live: a digest-keyed blob store, and the local checkout cache.

``open_store(settings)`` builds the pair the settings describe: the local directory store
under ``MODELPORT_HOME`` (the default), or an S3 bucket (``MODELPORT_STORE_URL=s3://...``)
with a checkout cache under ``MODELPORT_CACHE_PATH``. ``protect`` wraps it in the
encrypting store when encryption at rest is on (``encrypted.py``); checkouts then go where
``plaintext.py`` says.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy import Engine

from modelport.config import Settings
from modelport.errors import InvalidInput
from modelport.registry.store.base import (
    Blob,
    BlobStore,
    BlobWriter,
    FileEntry,
    GcReport,
    References,
    StoredBlob,
    hash_file,
    manifest_key,
    safe_relative_path,
    verify_blobs,
)
from modelport.registry.store.checkout import CheckoutCache
from modelport.registry.store.encrypted import BlobKeys, EncryptedStore
from modelport.registry.store.local import LocalStore
from modelport.registry.store.plaintext import process_directory
from modelport.registry.store.s3 import S3Store
from modelport.security.crypto import master_key

__all__ = [
    "Blob",
    "BlobStore",
    "BlobWriter",
    "CheckoutCache",
    "EncryptedStore",
    "FileEntry",
    "GcReport",
    "LocalStore",
    "References",
    "S3Store",
    "StoredBlob",
    "checkout_cache_for",
    "hash_file",
    "manifest_key",
    "open_store",
    "protect",
    "safe_relative_path",
    "verify_blobs",
]


def open_store(settings: Settings) -> BlobStore:
    """The blob store ``settings`` name.

    Raises:
        InvalidInput: ``MODELPORT_STORE_URL`` has a scheme modelport does not know.
    """
    url = settings.store_url
    if not url:
        return LocalStore(settings.resolved_store_path())
    scheme = urlparse(url).scheme
    if scheme == "s3":
        return S3Store(url, endpoint_url=settings.s3_endpoint_url, grace=settings.gc_grace)
    if scheme == "file":
        return LocalStore(Path(urlparse(url).path).expanduser())
    raise InvalidInput(
        f"MODELPORT_STORE_URL={url!r}: unknown kind of store; use s3://bucket/prefix, or "
        "file:///a/directory (or leave it unset for the directory under MODELPORT_HOME)"
    )


def protect(store: BlobStore, engine: Engine, settings: Settings) -> BlobStore:
    """``store`` wrapped in an ``EncryptedStore`` when a master key is set or the database
    records encrypted blobs (so that reading one without the key says so); else ``store``.

    Raises:
        EncryptionKeyError: the master key set is malformed.
    """
    master = master_key(settings)
    keys = BlobKeys(engine)
    if master is None and not keys.any():
        return store
    grace = 0.0 if isinstance(store, LocalStore) else settings.gc_grace
    return EncryptedStore(store, keys, master, grace=grace)


def checkout_cache_for(store: BlobStore, settings: Settings) -> CheckoutCache:
    """The checkout cache for ``store``: inside a local store's own directory (its files
    are linked, never copied), else under ``MODELPORT_CACHE_PATH``. With encryption on,
    a private directory of decrypted files (``plaintext.process_directory``); with
    encrypted blobs but no key, the cache of a remote store (only plaintext blobs open)."""
    master = master_key(settings)
    if master is not None:
        return CheckoutCache(process_directory(settings, store.url, master.key_id), store)
    if isinstance(store, LocalStore):
        return CheckoutCache(store.root, store, blobs=store.blobs)
    return CheckoutCache(settings.resolved_cache_path(), store)
