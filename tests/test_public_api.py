"""The curated public API is pinned: adding or removing a name is a deliberate act."""

from __future__ import annotations

import modelport


def test_public_names() -> None:
    assert modelport.__all__ == [
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
    for name in modelport.__all__:
        assert hasattr(modelport, name)


def test_errors_have_stable_codes_and_one_root() -> None:
    from modelport import errors

    classes = [getattr(errors, name) for name in errors.__all__ if name[0].isupper()]
    classes = [cls for cls in classes if cls is not errors.ERRORS]
    codes = set()
    for cls in classes:
        assert issubclass(cls, errors.ModelportError)
        codes.add(cls.code)
        assert errors.error_class(cls.code) is cls
        rebuilt = errors.error_from_code(cls.code, "why")
        assert type(rebuilt) is cls and rebuilt.message == "why"
    assert len(codes) == len(classes)
    assert errors.error_class("from-a-newer-server") is errors.ModelportError


def test_package_is_typed() -> None:
    from pathlib import Path

    assert (Path(modelport.__file__).parent / "py.typed").exists()


def test_cli_start_imports_no_framework() -> None:
    """`modelport ls` must start fast: numpy, the SQLAlchemy ORM, onnx, rich and the serving
    stack stay unimported until a command needs them (a regression shows here, not as a timing)."""
    import subprocess
    import sys

    probe = (
        "import sys, modelport.cli.main; "
        "print(sorted(m for m in ('numpy', 'sqlalchemy.orm', 'onnx', 'onnxruntime', 'rich', "
        "'uvicorn', 'grpc', 'starlette', 'alembic') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
