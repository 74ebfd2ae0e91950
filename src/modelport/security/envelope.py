"""The sealed-blob format: a stream cut into chunks, each sealed with AES-256-GCM.

A file of any size is sealed and opened in constant memory (one chunk at a time)::

    header   b"MPENC" | version (1 byte) | chunk size (u32) | nonce prefix (8 random bytes)
    chunk i  AES-GCM(data key, nonce = prefix || i (u32), plaintext chunk,
                     associated data = header || i (u64) || last (1 byte)) -> ciphertext || tag

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last holds fewer
(possibly none), so a stream always ends with a sealed last chunk. Because the index and the
last-chunk flag are authenticated, reordered, dropped or duplicated chunks fail, and so does
a stream cut short at any byte (its new last chunk was sealed as not-last, or is not whole).
The header is authenticated with every chunk. A blob is bound to its digest by its data key,
which is random per blob and unwrapped only with that digest (``crypto.MasterKey.unwrap``):
ciphertext moved onto another digest does not open.

Tampering of any kind is ``VerificationFailed``, raised by ``read`` as soon as it is seen.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import BinaryIO

from modelport.errors import VerificationFailed
from modelport.registry.store.base import Readable

__all__ = ["CHUNK_SIZE", "Opened", "looks_sealed", "seal"]

CHUNK_SIZE = 1024 * 1024
_MAGIC = b"MPENC"
_VERSION = 1
_HEADER = struct.Struct(">5sBI8s")
_TAG = 16
_MAX_CHUNKS = 2**32


def seal(
    source: Readable, target: BinaryIO, data_key: bytes, *, chunk_size: int = CHUNK_SIZE
) -> tuple[str, int]:
    """Write ``source`` (read to its end) sealed under ``data_key`` to ``target``.

    Returns the sha256 hex digest and size of the *plaintext*: the blob's key in the store.
    """
    # cryptography is imported where a blob is sealed or opened, not with the module: every
    # command opens a registry, and ~6 ms of imports would be paid by all of them.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = _HEADER.pack(_MAGIC, _VERSION, chunk_size, os.urandom(8))
    cipher = AESGCM(data_key)
    hasher = hashlib.sha256()
    target.write(header)
    size = 0
    index = 0
    while True:
        chunk = _read_exact(source, chunk_size)
        hasher.update(chunk)
        size += len(chunk)
        last = len(chunk) < chunk_size
        if index >= _MAX_CHUNKS:
            raise ValueError("a blob this large needs a larger chunk size")
        target.write(cipher.encrypt(_nonce(header, index), chunk, _aad(header, index, last)))
        if last:
            return hasher.hexdigest(), size
        index += 1


def looks_sealed(source: Readable) -> bool:
    """Whether ``source`` starts like a sealed stream (reads its first bytes). Plaintext
    that starts with the magic is possible but not worth a thought: this only tells an
    interrupted ``encrypt-existing`` apart from a finished one."""
    return _read_exact(source, len(_MAGIC)) == _MAGIC


class Opened:
    """The plaintext of a sealed stream, read one chunk at a time (a ``Readable``).

    ``digest`` only names the blob in messages.

    Raises (from ``read``):
        VerificationFailed: the stream is not a sealed blob, or was altered or cut short.
    """

    def __init__(self, source: Readable, data_key: bytes, digest: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._source = source
        self._cipher = AESGCM(data_key)
        self._digest = digest
        self._header = b""
        self._chunk_size = 0
        self._index = 0
        self._buffer = memoryview(b"")
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            parts = [bytes(self._buffer)]
            self._buffer = memoryview(b"")
            while not self._done:
                parts.append(self._next_chunk())
            return b"".join(parts)
        while not self._buffer and not self._done:
            self._buffer = memoryview(self._next_chunk())
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return bytes(taken)

    def _next_chunk(self) -> bytes:
        from cryptography.exceptions import InvalidTag

        if not self._header:
            self._read_header()
        sealed = _read_exact(self._source, self._chunk_size + _TAG)
        last = len(sealed) < self._chunk_size + _TAG
        if len(sealed) < _TAG:
            raise self._damaged("it ends before its last chunk (truncated)")
        try:
            plain = self._cipher.decrypt(
                _nonce(self._header, self._index), sealed, _aad(self._header, self._index, last)
            )
        except InvalidTag:
            raise self._damaged(
                f"chunk {self._index} fails its authentication tag (altered, reordered or "
                "truncated)"
            ) from None
        if last:
            if self._source.read(1):
                raise self._damaged("bytes follow its last chunk")
            self._done = True
        self._index += 1
        return plain

    def _read_header(self) -> None:
        header = _read_exact(self._source, _HEADER.size)
        if len(header) < _HEADER.size:
            raise self._damaged("it is too short to be a sealed blob")
        magic, version, chunk_size, _prefix = _HEADER.unpack(header)
        if magic != _MAGIC or version != _VERSION or chunk_size <= 0:
            raise self._damaged("its header is not that of a sealed blob")
        self._header = header
        self._chunk_size = chunk_size

    def _damaged(self, why: str) -> VerificationFailed:
        return VerificationFailed(
            f"the encrypted blob {self._digest[:12]}… is damaged: {why}. Run `modelport "
            "verify --all` to see which versions are damaged, and push them again"
        )


def _read_exact(source: Readable, size: int) -> bytes:
    """``size`` bytes of ``source``, fewer only at its end (streams may return short reads)."""
    first = source.read(size)
    if len(first) == size or not first:
        return first
    parts = [first]
    missing = size - len(first)
    while missing:
        more = source.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _nonce(header: bytes, index: int) -> bytes:
    return header[-8:] + index.to_bytes(4, "big")


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")
