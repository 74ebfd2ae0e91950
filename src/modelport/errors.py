"""The one error hierarchy of modelport.

Every failure a user can cause or meet is one of these::

    ModelportError                 a failure with no more precise class
    ├── InvalidInput               bad request data, names, options
    │   ├── InvalidName            a model/alias/tag name that is not allowed
    │   └── PayloadTooLarge        a request body or array over a limit
    ├── NotFound                   unknown model, version or alias
    ├── Conflict                   the change clashes with current state
    ├── UnsupportedFormat          no runtime knows this model format
    ├── InvalidModel               corrupt, truncated or unsafe model file
    ├── VerificationFailed         stored bytes do not match the manifest
    ├── MissingDependency          an optional extra is not installed
    ├── StorageError               the disk or database refused a write
    ├── Unavailable                not ready, unloaded, shutting down: retry
    │   └── Overloaded             queue full or too many in flight: back off, retry
    ├── Timeout                    a deadline passed
    ├── Unauthorized               no or bad credentials
    ├── Forbidden                  credentials lack the right
    ├── RateLimited                a key or an address is over its rate: wait, then retry
    ├── EncryptionKeyError         encrypted files and a missing or wrong master key
    ├── GateFailed                 a derived model was refused by a gate the user set
    └── Internal                   a deterministic failure inside a model or the server:
                                   retrying will not help

The one source of truth for what each error is at every edge is the class itself: its
stable ``code``, ``http_status``, ``grpc_status`` (a ``grpc.StatusCode`` name, so this module
imports no grpc) and ``exit_code`` (the CLI's), inherited by subclasses that do not set
their own. ``ERRORS`` lists every class; docs/errors.md prints the table and a test holds it
to these attributes.

Messages are written for the user: what was wrong, what was expected, what to do.
The ``code`` travels with an error across processes and over the wire (the ``code`` field of
a JSON error body ``{"error": message, "code": code}``, the ``modelport-error`` trailing
metadata of a gRPC error), and ``error_from_code(code, message)`` turns it back into the
error.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ERRORS",
    "Conflict",
    "EncryptionKeyError",
    "Forbidden",
    "GateFailed",
    "Internal",
    "InvalidInput",
    "InvalidModel",
    "InvalidName",
    "MissingDependency",
    "ModelportError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "StorageError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnsupportedFormat",
    "VerificationFailed",
    "error_class",
    "error_from_code",
]


class ModelportError(Exception):
    """Base of every error modelport raises on purpose."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[str] = "INTERNAL"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ModelportError):
    """The request, its tensors or an option is malformed."""

    code = "invalid_input"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"
    exit_code = 2


class InvalidName(InvalidInput):
    """A model, alias or tag name breaks the naming rules."""

    code = "invalid_name"


class PayloadTooLarge(InvalidInput):
    """A request body, or an array in it, is over a limit (HTTP 413)."""

    code = "payload_too_large"
    http_status = 413


class NotFound(ModelportError):
    """A model, version, alias or file does not exist."""

    code = "not_found"
    http_status = 404
    grpc_status = "NOT_FOUND"
    exit_code = 3


class Conflict(ModelportError):
    """The change clashes with the current state (e.g. deleting an aliased version)."""

    code = "conflict"
    http_status = 409
    grpc_status = "FAILED_PRECONDITION"
    exit_code = 4


class UnsupportedFormat(ModelportError):
    """No runtime recognises the model, or it uses a feature we cannot serve."""

    code = "unsupported"
    http_status = 501
    grpc_status = "UNIMPLEMENTED"
    exit_code = 5


class InvalidModel(ModelportError):
    """The model file is corrupt, truncated, empty or unsafe to load."""

    code = "invalid_model"
    exit_code = 6


class VerificationFailed(ModelportError):
    """Stored bytes no longer match their manifest digest (tampering or disk corruption)."""

    code = "verification"
    exit_code = 7


class MissingDependency(ModelportError):
    """An optional framework is needed but not installed."""

    code = "missing_dependency"
    exit_code = 8


class StorageError(ModelportError):
    """The artifact store or the database could not complete a write."""

    code = "storage"
    http_status = 507
    exit_code = 9


class Unavailable(ModelportError):
    """The service cannot take the request now (not ready, overloaded, draining)."""

    code = "unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"
    exit_code = 10


class Overloaded(Unavailable):
    """Too much work queued or in flight: retry later (HTTP 503, gRPC RESOURCE_EXHAUSTED)."""

    code = "overloaded"
    grpc_status = "RESOURCE_EXHAUSTED"


class Timeout(ModelportError):
    """The request's deadline passed before it completed."""

    code = "timeout"
    http_status = 504
    grpc_status = "DEADLINE_EXCEEDED"
    exit_code = 11


class Unauthorized(ModelportError):
    """No credentials, or credentials that are not valid."""

    code = "unauthorized"
    http_status = 401
    grpc_status = "UNAUTHENTICATED"
    exit_code = 12


class Forbidden(ModelportError):
    """Valid credentials without the right to do this."""

    code = "forbidden"
    http_status = 403
    grpc_status = "PERMISSION_DENIED"
    exit_code = 13


class RateLimited(ModelportError):
    """A key, or a client address failing to authenticate, is over its rate (HTTP 429 with
    ``Retry-After``, gRPC RESOURCE_EXHAUSTED)."""

    code = "rate_limited"
    http_status = 429
    grpc_status = "RESOURCE_EXHAUSTED"
    exit_code = 15

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EncryptionKeyError(ModelportError):
    """Stored files are encrypted and the master key is missing or is not the one that
    encrypted them (the message names the key id expected)."""

    code = "encryption_key"
    exit_code = 16


class GateFailed(ModelportError):
    """An optimized model did worse than a gate allows (agreement, accuracy, speed, size);
    nothing was stored. The message says which gate failed and by how much."""

    code = "gate_failed"
    http_status = 422
    grpc_status = "FAILED_PRECONDITION"
    exit_code = 14


class Internal(ModelportError):
    """A deterministic failure inside a model or the server (HTTP 500, gRPC INTERNAL).

    Retrying the same request fails the same way, so it is never reported as ``Unavailable``.
    """

    code = "internal"
    http_status = 500
    grpc_status = "INTERNAL"
    exit_code = 1


ERRORS: tuple[type[ModelportError], ...] = (
    ModelportError,
    InvalidInput,
    InvalidName,
    PayloadTooLarge,
    NotFound,
    Conflict,
    UnsupportedFormat,
    InvalidModel,
    VerificationFailed,
    MissingDependency,
    StorageError,
    Unavailable,
    Overloaded,
    Timeout,
    Unauthorized,
    Forbidden,
    RateLimited,
    EncryptionKeyError,
    GateFailed,
    Internal,
)
"""Every error class, in the order of the docstring's tree (and of docs/errors.md)."""

_BY_CODE = {cls.code: cls for cls in ERRORS}


def error_class(code: str) -> type[ModelportError]:
    """The class whose stable ``code`` is ``code``; ``ModelportError`` for a code unknown here
    (an error from a newer server, say)."""
    return _BY_CODE.get(code, ModelportError)


def error_from_code(code: str, message: str) -> ModelportError:
    """Rebuild an error that crossed a process or the wire as its stable code and message."""
    return error_class(code)(message)
