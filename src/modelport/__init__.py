"""modelport: turn trained models into production services."""

from typing import TYPE_CHECKING, Any

from modelport.config import Settings
from modelport.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidModel,
    InvalidName,
    MissingDependency,
    ModelportError,
    NotFound,
    Overloaded,
    StorageError,
    Timeout,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
    VerificationFailed,
)
from modelport.registry import Lineage, ModelSummary, ModelVersion, Registry
from modelport.runtimes import LoadedModel, LoadOptions
from modelport.types import DataType, ModelRef, Signature, Tensors, TensorSpec

if TYPE_CHECKING:
    from modelport.client import AsyncClient, Client

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "DataType",
    "Forbidden",
    "InvalidInput",
    "InvalidModel",
    "InvalidName",
    "Lineage",
    "LoadOptions",
    "LoadedModel",
    "MissingDependency",
    "ModelRef",
    "ModelSummary",
    "ModelVersion",
    "ModelportError",
    "NotFound",
    "Overloaded",
    "Registry",
    "Settings",
    "Signature",
    "StorageError",
    "TensorSpec",
    "Tensors",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnsupportedFormat",
    "VerificationFailed",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The client (numpy, grpc) is imported when first named: the CLI starts without it.
    if name in ("AsyncClient", "Client"):
        from modelport import client

        return getattr(client, name)
    raise AttributeError(f"module 'modelport' has no attribute {name!r}")
