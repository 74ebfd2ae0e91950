"""The one error hierarchy of modelport.

Every failure a user can cause or meet is one of these; each edge (CLI, HTTP, gRPC) maps
them once, by class, to its own status codes::

    ModelportError                 code            CLI exit
    ├── InvalidInput               invalid_input   2   bad request data, names, options
    │   └── InvalidName            invalid_name    2   a model/alias/tag name that is not allowed
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
    └── Forbidden                  forbidden       13  credentials lack the right

Messages are written for the user: what was wrong, what was expected, what to do.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidModel",
    "InvalidName",
    "MissingDependency",
    "ModelportError",
    "NotFound",
    "Overloaded",
    "StorageError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnsupportedFormat",
    "VerificationFailed",
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
