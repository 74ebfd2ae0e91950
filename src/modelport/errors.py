"""The one error hierarchy of modelport.

Every failure a user can cause or meet is one of these; each edge (CLI, HTTP, gRPC) maps
them once, by class, to its own status codes::

    ModelportError                 code            CLI exit
    ├── InvalidInput               invalid_input   2   bad request data, names, options
    │   ├── InvalidName            invalid_name    2   a model/alias/tag name that is not allowed
    │   └── PayloadTooLarge        payload_too_large 2 a request body or array over a limit
    ├── NotFound                   not_found       3   unknown model, version or alias
    ├── Conflict                   conflict        4   the change clashes with current state
    ├── UnsupportedFormat          unsupported     5   no runtime knows this model format
    ├── InvalidModel               invalid_model   6   corrupt, truncated or unsafe model file
    ├── VerificationFailed         verification    7   stored bytes do not match the manifest
    ├── MissingDependency          missing_dep     8   an optional extra is not installed
    ├── StorageError               storage         9   the disk or database refused a write
    ├── Unavailable                unavailable     10  not ready, unloaded, shutting down
    │   └── Overloaded             overloaded      10  queue full or too many in flight: back off
    ├── Timeout                    timeout         11  a deadline passed
    ├── Unauthorized               unauthorized    12  no or bad credentials
    ├── Forbidden                  forbidden       13  credentials lack the right
    └── Internal                   internal        1   a deterministic failure inside a model
                                                       or the server: retrying will not help

Messages are written for the user: what was wrong, what was expected, what to do.
The ``code`` travels with an error across processes and over the wire (the ``code`` field of
a JSON error body, the ``modelport-error`` trailing metadata of a gRPC error), and
``error_class(code)`` turns it back into the class.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "Conflict",
    "Forbidden",
    "Internal",
    "InvalidInput",
    "InvalidModel",
    "InvalidName",
    "MissingDependency",
    "ModelportError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
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

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ModelportError):
    """The request, its tensors or an option is malformed."""

    code = "invalid_input"


class InvalidName(InvalidInput):
    """A model, alias or tag name breaks the naming rules."""

    code = "invalid_name"


class PayloadTooLarge(InvalidInput):
    """A request body, or an array in it, is over a limit (HTTP 413)."""

    code = "payload_too_large"


class NotFound(ModelportError):
    """A model, version, alias or file does not exist."""

    code = "not_found"


class Conflict(ModelportError):
    """The change clashes with the current state (e.g. deleting an aliased version)."""

    code = "conflict"


class UnsupportedFormat(ModelportError):
    """No runtime recognises the model, or it uses a feature we cannot serve."""

    code = "unsupported"


class InvalidModel(ModelportError):
    """The model file is corrupt, truncated, empty or unsafe to load."""

    code = "invalid_model"


class VerificationFailed(ModelportError):
    """Stored bytes no longer match their manifest digest (tampering or disk corruption)."""

    code = "verification"


class MissingDependency(ModelportError):
    """An optional framework is needed but not installed."""

    code = "missing_dependency"


class StorageError(ModelportError):
    """The artifact store or the database could not complete a write."""

    code = "storage"


class Unavailable(ModelportError):
    """The service cannot take the request now (not ready, overloaded, draining)."""

    code = "unavailable"


class Overloaded(Unavailable):
    """Too much work queued or in flight: retry later (HTTP 503, gRPC RESOURCE_EXHAUSTED)."""

    code = "overloaded"


class Timeout(ModelportError):
    """The request's deadline passed before it completed."""

    code = "timeout"


class Unauthorized(ModelportError):
    """No credentials, or credentials that are not valid."""

    code = "unauthorized"


class Forbidden(ModelportError):
    """Valid credentials without the right to do this."""

    code = "forbidden"


class Internal(ModelportError):
    """A deterministic failure inside a model or the server (HTTP 500, gRPC INTERNAL).

    Retrying the same request fails the same way, so it is never reported as ``Unavailable``.
    """

    code = "internal"


def _subclasses(cls: type[ModelportError]) -> list[type[ModelportError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


def error_class(code: str) -> type[ModelportError]:
    """The class whose stable ``code`` is ``code``; ``ModelportError`` for a code unknown here
    (an error from a newer server, say)."""
    for cls in _subclasses(ModelportError):
        if cls.code == code:
            return cls
    return ModelportError


def error_from_code(code: str, message: str) -> ModelportError:
    """Rebuild an error that crossed a process or the wire as its stable code and message."""
    return error_class(code)(message)
