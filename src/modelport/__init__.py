"""modelport: turn trained models into production services."""

from typing import TYPE_CHECKING, Any

from modelport.config import Settings
from modelport.errors import (
    Conflict,
    Forbidden,
    GateFailed,
    Internal,
    InvalidInput,
    InvalidModel,
    InvalidName,
    MissingDependency,
    ModelportError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
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
    from modelport.conversion import convert
    from modelport.optimization import optimize
    from modelport.serving.launch import serve
    from modelport.tuning import tune

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "DataType",
    "Forbidden",
    "GateFailed",
    "Internal",
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
    "PayloadTooLarge",
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
    "convert",
    "optimize",
    "serve",
    "tune",
]


def __getattr__(name: str) -> Any:
    # The client (numpy, grpc), conversion, optimization and the server are imported when
    # first named: the CLI starts without them.
    if name in ("AsyncClient", "Client"):
        from modelport import client

        return getattr(client, name)
    if name == "convert":
        from modelport.conversion import convert

        return convert
    if name == "optimize":
        from modelport.optimization import optimize

        return optimize
    if name == "serve":
        from modelport.serving.launch import serve

        return serve
    if name == "tune":
        from modelport.tuning import tune

        return tune
    raise AttributeError(f"module 'modelport' has no attribute {name!r}")
