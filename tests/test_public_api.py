"""The curated public API is pinned: adding or removing a name is a deliberate act."""

from __future__ import annotations

import modelport


def test_public_names() -> None:
    assert modelport.__all__ == [
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
    for name in modelport.__all__:
        assert hasattr(modelport, name)


def test_errors_have_stable_codes_and_one_root() -> None:
    from modelport import errors

    codes = set()
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ModelportError)
        codes.add(cls.code)
    assert len(codes) == len(errors.__all__)


def test_package_is_typed() -> None:
    from pathlib import Path

    assert (Path(modelport.__file__).parent / "py.typed").exists()
