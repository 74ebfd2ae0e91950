"""The S3 blob store: version files as objects ``<prefix>/blobs/<sha256>`` in a bucket.

Works with AWS S3 and S3-compatible servers (MinIO, Ceph, moto). boto3 is imported only
here, on first use (``pip install 'modelport[s3]'``); the endpoint comes from
``MODELPORT_S3_ENDPOINT_URL``, region and credentials from boto3's own chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_REGION``, an
instance role, ...).

Writes. A push first hashes its local file (the key is the digest), then uploads it in
parts while hashing the bytes as they are sent, and completes the upload only if those
bytes hash to the key; the completion is conditional (``If-None-Match: *``), so two
processes storing the same blob at once both succeed and the object is written once.

Garbage collection cannot lock other machines out, so it keeps a grace period
(``MODELPORT_GC_GRACE``, one hour by default): it lists the blobs, then reads the
references, and removes only unreferenced blobs *older than the grace period*; a push
refreshes every blob it reuses and, right before its commit, checks each blob is still
there and younger than half the grace period. Abandoned multipart uploads older than the
grace period are aborted.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from modelport.errors import (
    Conflict,
    InvalidInput,
    InvalidModel,
    MissingDependency,
    StorageError,
    VerificationFailed,
)
from modelport.registry.store.base import (
    CHUNK,
    Blob,
    GcReport,
    Readable,
    References,
    StoredBlob,
    hash_stream,
    is_digest,
)

__all__ = ["S3Store", "S3Writer", "parse_s3_url"]

PART_SIZE = 16 * 1024 * 1024  # S3 wants at least 5 MiB per part but the last
_CONCURRENCY = 4


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as ``("bucket", "some/prefix/")``.

    Raises:
        InvalidInput: not an ``s3://`` URL with a bucket.
    """
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvalidInput(
            f"MODELPORT_STORE_URL={url!r} is not an S3 URL; use s3://bucket or s3://bucket/prefix"
        )
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


class S3Store:
    """A blob store in an S3 bucket (see the module docstring for the rules it keeps).

    ``client`` is a boto3 S3 client; by default one is made from ``endpoint_url`` and the
    AWS environment. ``grace`` is in seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        grace: float = 3600.0,
        part_size: int = PART_SIZE,
        client: Any = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self._url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._endpoint = endpoint_url
        self._grace = grace
        self._part_size = max(part_size, 5 * 1024 * 1024)
        self._client_instance = client

    @property
    def url(self) -> str:
        return self._url

    @property
    def _client(self) -> Any:
        if self._client_instance is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise MissingDependency(
                    "an s3:// store needs boto3; install it with: pip install 'modelport[s3]'"
                ) from exc
            config = Config(
                retries={"max_attempts": 4, "mode": "standard"},
                max_pool_connections=_CONCURRENCY * 2,
            )
            self._client_instance = boto3.client("s3", endpoint_url=self._endpoint, config=config)
        return self._client_instance

    def _key(self, digest: str) -> str:
        return f"{self.prefix}blobs/{digest}"

    # -- the BlobStore protocol --------------------------------------------------------

    def put(self, source: Readable) -> Blob:
        with _seekable(source) as readable:
            digest, size = hash_stream(readable)
            readable.seek(0)
            key = self._key(digest)
            with self._errors("storing a file"):
                if self._modified(key) is not None:
                    self._refresh(key)
                elif size <= self._part_size:
                    data = readable.read()
                    _check_sent(hashlib.sha256(data).hexdigest(), len(data), digest, size)
                    self._put_object(key, data)
                else:
                    self._multipart(readable, key, digest, size)
        return Blob(digest, size)

    def put_sealed(self, digest: str, source: Readable, *, replace: bool = False) -> None:
        """See ``S3Writer.put_sealed`` (and ``replace_sealed``, with ``replace``)."""
        key = self._key(digest)
        with _seekable(source) as readable, self._errors("storing a file"):
            readable.seek(0, 2)
            size = readable.tell()
            readable.seek(0)
            if not replace and self._modified(key) is not None:
                self._refresh(key)
            elif size <= self._part_size:
                self._put_object(key, readable.read(), replace=replace)
            else:
                self._multipart(readable, key, None, size, replace=replace)

    @contextlib.contextmanager
    def get(self, digest: str) -> Iterator[Readable]:
        with self._errors(f"reading blob {digest[:12]}…"):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(digest))
            except Exception as exc:
                if _error_code(exc) in ("NoSuchKey", "404"):
                    raise VerificationFailed(
                        f"blob {digest[:12]}… is missing from the store {self.url}; the stored "
                        "model is damaged. Run `modelport verify --all` to see which versions "
                        "are damaged, and push them again"
                    ) from None
                raise
            body = response["Body"]
            try:
                yield body
            finally:
                body.close()

    def exists(self, digest: str) -> bool:
        with self._errors("looking for a blob"):
            return self._modified(self._key(digest)) is not None

    def delete(self, digest: str) -> None:
        with self._errors("deleting a blob"):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(digest))

    def list(self) -> Iterator[StoredBlob]:
        with self._errors("listing the store"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}blobs/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if is_digest(name):
                        yield StoredBlob(name, item["Size"], item["LastModified"].timestamp())

    def holds_blobs(self) -> bool:
        with self._errors("listing the store"):
            page = self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}blobs/", MaxKeys=1
            )
        return bool(page.get("KeyCount", 0))

    @contextlib.contextmanager
    def writing(self) -> Iterator[S3Writer]:
        # No lock reaches other machines: the grace period and ``publish`` keep gc away.
        yield S3Writer(self)

    def confirm(self, digests: Iterable[str]) -> None:
        """Every blob in ``digests`` is held and younger than half the grace period.

        Raises:
            StorageError: one is gone.
        """
        now = time.time()
        with self._errors("checking the stored files"):
            for digest in digests:
                key = self._key(digest)
                modified = self._modified(key)
                if modified is None:
                    raise StorageError(
                        f"blob {digest[:12]}… vanished from {self.url} during the push (a gc "
                        "with a short MODELPORT_GC_GRACE?); nothing was published, push again"
                    )
                if now - modified > self._grace / 2:
                    self._refresh(key)

    def collect_garbage(
        self, read_references: Callable[[], References], *, wait: float = 60.0
    ) -> GcReport:
        """Remove unreferenced blobs and abandoned multipart uploads older than the grace
        period. The blobs are listed *before* the references are read: a blob a push
        stored or refreshed after the listing is not in it, and one it stored before is
        younger than the grace period. ``wait`` is unused: nothing is locked.
        """
        del wait
        listed = list(self.list())
        references = read_references()
        horizon = time.time() - self._grace
        removed = freed = 0
        with self._errors("collecting garbage"):
            for blob in listed:
                if blob.digest in references.digests or blob.modified > horizon:
                    continue
                # Looked at again right before deleting: a push may have refreshed it.
                modified = self._modified(self._key(blob.digest))
                if modified is not None and modified <= horizon:
                    self.delete(blob.digest)
                    removed += 1
                    freed += blob.size
            aborted = self._abort_uploads(horizon)
        return GcReport(blobs_removed=removed, bytes_freed=freed, staging_removed=aborted)

    # -- S3 calls ----------------------------------------------------------------------

    def _modified(self, key: str) -> float | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        modified: datetime = head["LastModified"]
        return modified.timestamp()

    def _refresh(self, key: str) -> None:
        """Give an object a new modification time (a copy onto itself), so that a gc in
        progress does not take it for an old orphan.

        S3 copies at most 5 GB in one request; a larger blob keeps its time (and gc's
        grace period is then all that protects a push reusing it, see the module
        docstring)."""
        try:
            self._client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                Metadata={"refreshed": datetime.now(UTC).isoformat()},
            )
        except Exception as exc:
            if _error_code(exc) not in ("InvalidRequest", "EntityTooLarge"):
                raise

    def _put_object(self, key: str, data: bytes, *, replace: bool = False) -> None:
        condition = {} if replace else {"IfNoneMatch": "*"}
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **condition)
        except Exception as exc:
            if _error_code(exc) != "PreconditionFailed":  # stored meanwhile: same bytes
                raise

    def _multipart(
        self, source: Readable, key: str, digest: str | None, size: int, *, replace: bool = False
    ) -> None:
        client = self._client
        condition = {} if replace else {"IfNoneMatch": "*"}
        upload = client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            parts = self._upload_parts(source, key, upload, digest, size)
            try:
                client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload,
                    MultipartUpload={"Parts": parts},
                    **condition,
                )
            except Exception as exc:
                if _error_code(exc) != "PreconditionFailed":
                    raise
                # Another push stored the same bytes first; ours is not needed.
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
        except BaseException:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise

    def _upload_parts(
        self, source: Readable, key: str, upload: str, digest: str | None, size: int
    ) -> builtins.list[dict[str, Any]]:
        """Send the parts a few at a time, hashing each as it goes out (and checking the
        bytes sent hash to ``digest``, unless None: sealed bytes hash to nothing known)."""
        hasher = hashlib.sha256()
        sent = 0
        parts: builtins.list[dict[str, Any]] = []
        pending: deque[tuple[int, Future[Any]]] = deque()

        def settle(number: int, future: Future[Any]) -> None:
            parts.append({"PartNumber": number, "ETag": future.result()["ETag"]})

        with ThreadPoolExecutor(_CONCURRENCY, thread_name_prefix="modelport-s3") as pool:
            number = 0
            while chunk := source.read(self._part_size):
                number += 1
                hasher.update(chunk)
                sent += len(chunk)
                pending.append(
                    (
                        number,
                        pool.submit(
                            self._client.upload_part,
                            Bucket=self.bucket,
                            Key=key,
                            UploadId=upload,
                            PartNumber=number,
                            Body=chunk,
                        ),
                    )
                )
                while len(pending) >= _CONCURRENCY:
                    settle(*pending.popleft())
            while pending:
                settle(*pending.popleft())
        if digest is not None:
            _check_sent(hasher.hexdigest(), sent, digest, size)
        return parts

    def _abort_uploads(self, horizon: float) -> int:
        aborted = 0
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}blobs/"
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() <= horizon:
                    with contextlib.suppress(Exception):  # finished or aborted meanwhile
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        return aborted

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """botocore's exceptions as ``StorageError``s that say what to set or fix."""
        try:
            yield
        except (StorageError, VerificationFailed, InvalidModel, Conflict, MissingDependency):
            raise
        except Exception as exc:
            mapped = self._map_error(doing, exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _map_error(  # noqa: PLR0911  (one answer per failure a user can act on)
        self, doing: str, exc: Exception
    ) -> Exception | None:
        kind = type(exc).__name__
        code = _error_code(exc)
        endpoint = self._endpoint or "AWS S3"
        if kind in ("NoCredentialsError", "PartialCredentialsError"):
            return StorageError(
                f"no AWS credentials for the store {self.url}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance role)"
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"the bucket {self.bucket!r} does not exist at {endpoint}: create it, or fix "
                "MODELPORT_STORE_URL (and MODELPORT_S3_ENDPOINT_URL for a non-AWS server)"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return StorageError(
                f"{endpoint} refused access to {self.url} while {doing} ({code}): check "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            )
        if code in ("ConditionalRequestConflict", "409"):
            return Conflict(
                f"another push is storing the same file in {self.url} right now; push again"
            )
        if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
            return StorageError(
                f"cannot reach the S3 endpoint {endpoint} while {doing}: {exc}; check "
                "MODELPORT_S3_ENDPOINT_URL and the network"
            )
        if kind in ("ClientError", "BotoCoreError") or type(exc).__module__.startswith("botocore"):
            return StorageError(f"the store {self.url} failed while {doing}: {exc}")
        return None


class S3Writer:
    """Uploads go straight to their final keys (the key is the digest); ``publish``
    re-checks them before the commit."""

    staged = False

    def __init__(self, store: S3Store) -> None:
        self._store = store

    def put(self, source: Readable) -> Blob:
        return self._store.put(source)

    def put_sealed(self, digest: str, source: Readable) -> None:
        """Upload ``source`` (seekable, read from its start) under ``digest``, which its
        bytes do not hash to: an encryption of the blob (``store.encrypted``), whose
        plaintext the caller hashed. A blob already held under ``digest`` is kept."""
        self._store.put_sealed(digest, source)

    def replace_sealed(self, digest: str, source: Readable) -> None:
        """See ``BlobWriter.replace_sealed``: S3 replaces an object atomically."""
        self._store.put_sealed(digest, source, replace=True)

    def publish(self, digests: Iterable[str]) -> None:
        self._store.confirm(digests)


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _check_sent(digest: str, size: int, expected: str, expected_size: int) -> None:
    if (digest, size) != (expected, expected_size):
        raise InvalidModel(
            "a file changed while it was being pushed (its bytes no longer hash to the "
            "digest read first); nothing was stored, push it again"
        )


@contextlib.contextmanager
def _seekable(source: Readable) -> Iterator[Any]:
    """``source`` if it can be read twice, else a local spool of it."""
    seekable = getattr(source, "seekable", None)
    if seekable is not None and seekable():
        source_any: Any = source
        source_any.seek(0)
        yield source
        return
    with tempfile.TemporaryFile() as spool:
        while chunk := source.read(CHUNK):
            spool.write(chunk)
        spool.seek(0)
        yield spool
