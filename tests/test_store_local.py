"""The BlobStore contract, held by every store (the local directory and S3 on a moto
server), and the local checkout cache built on it."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport import Registry, Settings
from modelport.errors import InvalidInput, StorageError, VerificationFailed
from modelport.registry.store import (
    BlobStore,
    CheckoutCache,
    FileEntry,
    LocalStore,
    References,
    S3Store,
    open_store,
)
from modelport.registry.store.local import LocalWriter
from tests.onnx_models import make_add_model
from tests.s3_server import make_bucket, moto_s3, s3_client


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket = make_bucket(endpoint)
    # A part size of 5 MiB (S3's least) so that 12 MiB go up in three parts.
    return S3Store(
        f"s3://{bucket}/team",
        endpoint_url=endpoint,
        part_size=5 * 2**20,
        grace=0,
        client=s3_client(endpoint),
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Unseekable(io.RawIOBase):
    """A stream that can be read once, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._inner.readinto(buffer)


def nothing_referenced() -> References:
    return References(frozenset(), frozenset())


@pytest.mark.parametrize("size", [0, 1000, 12 * 2**20 + 7])
def test_put_keys_a_blob_by_the_digest_of_its_bytes(
    store: BlobStore, size: int, tmp_path: Path
) -> None:
    data = os.urandom(size)
    source = tmp_path / "file"
    source.write_bytes(data)
    with source.open("rb") as handle:
        blob = store.put(handle)
    assert (blob.digest, blob.size) == (sha256(data), size)
    assert store.exists(blob.digest)
    with store.get(blob.digest) as stream:
        assert stream.read() == data
    assert [(b.digest, b.size) for b in store.list()] == [(blob.digest, size)]
    assert store.holds_blobs()


def test_put_of_a_stream_that_cannot_be_read_twice(store: BlobStore) -> None:
    data = os.urandom(6 * 2**20)
    blob = store.put(Unseekable(data))
    assert blob.digest == sha256(data)
    with store.get(blob.digest) as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == blob.digest


def test_the_same_bytes_twice_are_one_blob(store: BlobStore) -> None:
    first = store.put(io.BytesIO(b"weights"))
    second = store.put(io.BytesIO(b"weights"))
    assert first == second
    assert len(list(store.list())) == 1


def test_delete_and_a_missing_blob(store: BlobStore) -> None:
    blob = store.put(io.BytesIO(b"gone soon"))
    store.delete(blob.digest)
    store.delete(blob.digest)  # nothing there: no error
    assert not store.exists(blob.digest)
    assert not store.holds_blobs()
    with pytest.raises(
        VerificationFailed, match="missing from the store|missing from the artifact"
    ):
        store.get(blob.digest).__enter__()


def test_gc_removes_only_unreferenced_blobs(store: BlobStore) -> None:
    kept = store.put(io.BytesIO(b"kept"))
    dropped = store.put(io.BytesIO(b"dropped"))
    report = store.collect_garbage(lambda: References(frozenset({kept.digest}), frozenset()))
    assert report.blobs_removed == 1
    assert report.bytes_freed == len(b"dropped")
    assert store.exists(kept.digest)
    assert not store.exists(dropped.digest)


def test_publish_never_references_a_blob_that_vanished(store: BlobStore) -> None:
    with store.writing() as writer:
        blob = writer.put(io.BytesIO(b"here"))
        writer.publish([blob.digest])
    assert store.exists(blob.digest)
    with store.writing() as writer:
        writer.put(io.BytesIO(b"here"))
        store.delete(blob.digest)  # a gc with no grace, meanwhile
        if writer.staged:  # the staged copy is filed again
            writer.publish([blob.digest])
            assert store.exists(blob.digest)
        else:  # the upload found the blob and did not send it again
            with pytest.raises(StorageError, match="vanished"):
                writer.publish([blob.digest])


def test_what_a_writer_did_not_publish_is_not_kept(store: BlobStore) -> None:
    with store.writing() as writer:
        blob = writer.put(io.BytesIO(b"a model that failed its check"))
    if writer.staged:
        assert not store.exists(blob.digest)
    else:  # uploaded already: an orphan for gc
        assert store.collect_garbage(nothing_referenced).blobs_removed == 1
    assert not store.holds_blobs()


def test_checkout_downloads_verified_and_links_once(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20)
    blob = store.put(io.BytesIO(data))
    cache = CheckoutCache(tmp_path / "cache", store)
    files = [FileEntry("sub/model.bin", blob.digest, blob.size)]
    directory = cache.checkout(files)
    assert (directory / "sub" / "model.bin").read_bytes() == data
    assert cache.checkout(files) == directory
    report = cache.collect_garbage(nothing_referenced)
    assert (report.checkouts_removed, report.blobs_removed) == (1, 1)
    assert not directory.exists()


def test_checkout_refuses_bytes_that_do_not_match_the_digest(
    store: BlobStore, tmp_path: Path
) -> None:
    blob = store.put(io.BytesIO(b"the real bytes"))
    cache = CheckoutCache(tmp_path / "cache", store)
    claimed = FileEntry("model.bin", sha256(b"other bytes"), blob.size)
    store_bytes_under_wrong_key = FileEntry("model.bin", claimed.digest, claimed.size)
    with pytest.raises(VerificationFailed, match="missing"):
        cache.checkout([store_bytes_under_wrong_key])
    # A blob whose stored bytes changed is caught while it downloads.
    tampered = FileEntry("model.bin", blob.digest, blob.size)
    _overwrite(store, blob.digest, b"tampered bytes")
    with pytest.raises(VerificationFailed, match="does not match"):
        cache.checkout([tampered])
    assert not list((tmp_path / "cache" / "blobs").glob("*/*"))


def _overwrite(store: BlobStore, digest: str, data: bytes) -> None:
    if isinstance(store, LocalStore):
        path = store.blobs / digest[:2] / digest
        path.chmod(0o644)
        path.write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        s3 = store._client
        s3.put_object(Bucket=store.bucket, Key=f"{store.prefix}blobs/{digest}", Body=data)


def test_registry_takes_a_store_and_a_checkout_cache(tmp_path: Path, store: BlobStore) -> None:
    model = make_add_model(tmp_path / "add.onnx")
    cache = CheckoutCache(tmp_path / "elsewhere", store)
    settings = Settings(home=tmp_path / "home")
    with Registry(settings, store=store, checkout=cache) as registry:
        version = registry.push(model, "add")
        assert store.exists(version.files[0].digest)
        loaded = registry.load("add")
        try:
            assert loaded.signature == version.signature
        finally:
            loaded.close()
        assert registry.verify("add") == []
        assert any((tmp_path / "elsewhere" / "checkouts").iterdir())
    # The local store under MODELPORT_HOME saw nothing of it.
    assert not (tmp_path / "home" / "artifacts" / "blobs").exists() or not any(
        (tmp_path / "home" / "artifacts" / "blobs").iterdir()
    )


def test_the_default_local_layout_is_unchanged(tmp_path: Path) -> None:
    """Registries made before the store was split keep working: same directories."""
    model = make_add_model(tmp_path / "add.onnx")
    with Registry(Settings(home=tmp_path / "home")) as registry:
        version = registry.push(model, "add")
        registry.load("add").close()
    root = tmp_path / "home" / "artifacts"
    digest = version.files[0].digest
    assert (root / "blobs" / digest[:2] / digest).is_file()
    (checkout,) = (root / "checkouts").iterdir()
    # Linked, not copied: one inode.
    assert (checkout / "add.onnx").stat().st_ino == (
        root / "blobs" / digest[:2] / digest
    ).stat().st_ino
    assert (root / "gc.lock").exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [("ftp://models/team", "unknown kind of store"), ("s3:///team", "not an S3 URL")],
)
def test_a_store_url_modelport_cannot_use_is_refused(url: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=says):
        open_store(Settings(home=tmp_path, store_url=url))


def test_a_file_url_is_a_local_store(tmp_path: Path) -> None:
    store = open_store(Settings(home=tmp_path, store_url=f"file://{tmp_path / 'elsewhere'}"))
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "elsewhere"


def test_a_taken_file_is_linked_into_the_store_not_copied(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    received = tmp_path / "store-fs-upload.bin"  # same filesystem as the store
    received.write_bytes(b"weights" * 1000)
    with store.writing() as writer:
        assert isinstance(writer, LocalWriter)
        blob = writer.adopt(received)
        writer.publish([blob.digest])
    assert blob.digest == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert blob.size == 7000
    stored = store.root / "blobs" / blob.digest[:2] / blob.digest
    assert stored.stat().st_ino == received.stat().st_ino  # one inode: nothing copied
    received.unlink()  # the caller drops its name: the blob stays whole
    with store.get(blob.digest) as handle:
        assert handle.read() == b"weights" * 1000


def test_a_taken_file_on_another_filesystem_is_copied(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem (/dev/shm)")
    store = LocalStore(tmp_path / "store")
    received = shm / f"modelport-test-{os.getpid()}-{id(store)}"
    received.write_bytes(b"elsewhere")
    try:
        with store.writing() as writer:
            assert isinstance(writer, LocalWriter)
            blob = writer.adopt(received)
            writer.publish([blob.digest])
        stored = store.root / "blobs" / blob.digest[:2] / blob.digest
        assert stored.read_bytes() == b"elsewhere"
        assert stored.stat().st_ino != received.stat().st_ino
    finally:
        received.unlink()
