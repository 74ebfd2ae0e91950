"""Master keys for encryption at rest: loading, naming, and wrapping the per-blob data keys.

Envelope encryption: every blob is sealed (``security.envelope``) with its own random
256-bit data key; the data key is stored in the ``blob_keys`` table *wrapped* (AES-256-GCM)
under the master key, with the blob's digest as associated data, so a wrapped key copied
onto another blob's row does not open. The master key never touches the database or the
store: it comes from ``MODELPORT_ENCRYPTION_KEY`` (base64 of 32 bytes) or from the file
``MODELPORT_ENCRYPTION_KEY_FILE`` names. Rotation re-wraps the data keys under a new master
key; the blobs themselves are never rewritten.

A master key is known by its *key id*: the first 16 hex digits of HMAC-SHA256(key,
"modelport key id"), which names the key in messages and rows without revealing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from modelport.config import Settings
from modelport.errors import EncryptionKeyError, VerificationFailed

__all__ = [
    "KEY_BYTES",
    "MasterKey",
    "generate_key",
    "master_key",
    "parse_key",
    "read_key_file",
]

KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID_LABEL = b"modelport key id"
_WRAP_LABEL = b"modelport blob key\0"


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A 256-bit master key. ``repr`` shows only its id, so it is safe in logs and errors."""

    secret: bytes = field(repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise EncryptionKeyError(
                f"a master key is {KEY_BYTES} bytes; this one has {len(self.secret)}"
            )
        digest = hmac.new(self.secret, _KEY_ID_LABEL, hashlib.sha256).hexdigest()
        object.__setattr__(self, "key_id", digest[:16])

    def wrap(self, data_key: bytes, digest: str) -> str:
        """``data_key`` sealed under this key for the blob ``digest`` (base64 text)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self.secret).encrypt(nonce, data_key, _WRAP_LABEL + digest.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def unwrap(self, wrapped: str, digest: str) -> bytes:
        """The data key of blob ``digest`` from its wrapped form.

        Raises:
            VerificationFailed: the wrapped key was altered, or belongs to another blob
                (the caller has already checked the key id, so the key itself is right).
        """
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            raw = base64.b64decode(wrapped, validate=True)
            key = AESGCM(self.secret).decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _WRAP_LABEL + digest.encode()
            )
        except (InvalidTag, binascii.Error, ValueError):
            raise VerificationFailed(
                f"the stored data key of blob {digest[:12]}… does not open under master key "
                f"{self.key_id}: the blob_keys table was altered. Push the model again"
            ) from None
        return key


def generate_key() -> str:
    """A new random master key, as the base64 text ``MODELPORT_ENCRYPTION_KEY`` takes."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def parse_key(text: str, *, source: str) -> MasterKey:
    """The master key in base64 ``text``; ``source`` names where it came from for messages.

    Raises:
        EncryptionKeyError: not base64 of exactly 32 bytes (the key is never echoed).
    """
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(
            f"{source} is not base64; a master key is 32 random bytes in base64, as "
            "`modelport encryption generate` prints"
        ) from None
    if len(secret) != KEY_BYTES:
        raise EncryptionKeyError(
            f"{source} decodes to {len(secret)} bytes; a master key is {KEY_BYTES} bytes "
            "(make one with `modelport encryption generate`)"
        )
    return MasterKey(secret)


def read_key_file(path: Path) -> MasterKey:
    """The master key held (base64) in the file ``path``.

    Raises:
        EncryptionKeyError: the file cannot be read or does not hold a key.
    """
    try:
        text = path.expanduser().read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise EncryptionKeyError(f"cannot read the master key file {path}: {reason}") from None
    return parse_key(text, source=f"the master key file {path}")


def master_key(settings: Settings) -> MasterKey | None:
    """The master key ``settings`` configure, or None when encryption at rest is off.

    Raises:
        EncryptionKeyError: both variables are set, or the key is malformed.
    """
    if settings.encryption_key is not None and settings.encryption_key_file is not None:
        raise EncryptionKeyError(
            "set MODELPORT_ENCRYPTION_KEY or MODELPORT_ENCRYPTION_KEY_FILE, not both"
        )
    if settings.encryption_key is not None:
        return parse_key(
            settings.encryption_key.get_secret_value(), source="MODELPORT_ENCRYPTION_KEY"
        )
    if settings.encryption_key_file is not None:
        return read_key_file(settings.encryption_key_file)
    return None
