"""modelport: turn trained models into production services."""

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

__version__ = "0.1.0"

__all__ = [
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
