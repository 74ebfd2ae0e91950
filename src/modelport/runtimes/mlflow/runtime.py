"""The ``mlflow`` runtime: MLflow model directories (a folder with an ``MLmodel`` file).

An MLflow model wraps another format, so this runtime chooses a serving path at push time
(recorded as ``serving`` in the version's metadata):

- ``onnx``: the ``onnx`` flavor, served by modelport's ONNX runtime on the ``.onnx`` file
  inside; no mlflow needed, no code from the directory runs;
- ``skops``: the ``sklearn`` flavor saved with ``serialization_format="skops"`` (MLflow's
  default outside Databricks since 2.x), served by modelport's skops runtime, under its rules
  (types skops does not trust need ``--trust-pickle``);
- ``xgboost``: the ``xgboost`` flavor saved as JSON or UBJSON (``model_format`` json or ubj,
  MLflow's default), served by modelport's XGBoost runtime;
- ``lightgbm``: the ``lightgbm`` flavor saved as a LightGBM text model (older MLflow), served
  by modelport's LightGBM runtime;
- ``pyfunc``: anything else with a ``python_function`` flavor, through
  ``mlflow.pyfunc.load_model``, which unpickles (cloudpickle) code from the directory: refused
  unless pushed with ``--trust-pickle``.

Native paths (``NATIVE_FLAVORS``) are served by the runtime the table has for their format
and take that runtime's signature. The pyfunc path takes
``--signature``, else the signature ``MLmodel`` records (see ``mlflow.signature``), else the
saved input example or ``--example``, run once through the model to learn the outputs.

The whole directory is stored; ``entry`` is the directory itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelport.errors import InvalidModel, UnsupportedFormat
from modelport.runtimes.base import (
    LoadOptions,
    ModelFiles,
    ModelInfo,
    Predictor,
    PushOptions,
    Runtime,
    directory_files,
)
from modelport.runtimes.mlflow.model import PyfuncModel, describe_pyfunc, load_pyfunc
from modelport.runtimes.mlflow.signature import MLMODEL, MLModel, read_mlmodel
from modelport.runtimes.table import RuntimeTable, default_runtimes
from modelport.types import Signature

__all__ = ["MLflowRuntime"]

_PYFUNC = "python_function"

NATIVE_FLAVORS: tuple[tuple[str, str, str, Callable[[dict[str, Any]], bool]], ...] = (
    # (MLflow flavor, its key naming the model file, the modelport format, when it applies)
    ("onnx", "data", "onnx", lambda flavor: True),
    ("sklearn", "pickled_model", "skops", lambda f: f.get("serialization_format") == "skops"),
    ("xgboost", "data", "xgboost", lambda f: f.get("model_format", "ubj") in ("json", "ubj")),
    ("lightgbm", "data", "lightgbm", lambda f: "serialization_format" not in f),
)
"""Flavors served natively, in order of preference, with what they need."""
# Files a python_function flavor may name; each must be inside the directory.
_PYFUNC_FILES = ("data", "model_path", "python_model")
_SAFE_FORMATS = (
    "save it in a safe format: mlflow.sklearn.save_model(..., serialization_format='skops') "
    "for scikit-learn models, or the ONNX flavor (mlflow.onnx.save_model)"
)


class MLflowRuntime:
    """The ``mlflow`` format: a directory holding an ``MLmodel`` file (see the module doc).

    Native flavors are served by the runtime ``runtimes`` has for their format (default: the
    process's ``default_runtimes()``), never by an import of their own.
    """

    format = "mlflow"
    extra = "mlflow"

    def __init__(self, runtimes: RuntimeTable | None = None) -> None:
        self._runtimes = runtimes

    def _native(self, serving: str) -> Runtime:
        return (self._runtimes or default_runtimes()).get(serving)

    def detect(self, path: Path) -> bool:
        """Whether ``path`` is a directory with an ``MLmodel`` file. Never reads it."""
        try:
            return path.is_dir() and (path / MLMODEL).is_file()
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Read ``MLmodel``, choose the serving path and describe the model.

        Only the pyfunc path runs code from the directory, and only with ``--trust-pickle``.

        Raises:
            MissingDependency: PyYAML (always) or mlflow (pyfunc path) is not installed.
            InvalidModel: a broken ``MLmodel``, a flavor naming a missing file, a pyfunc model
                without ``--trust-pickle``, or one that fails to load.
            UnsupportedFormat: no flavor modelport can serve.
            InvalidInput: the pyfunc model records no signature and none was given.
        """
        model = read_mlmodel(path)
        files = ModelFiles(path, ".", directory_files(path))
        serving, entry = _serving_path(model)
        metadata: dict[str, Any] = {
            "flavors": sorted(model.flavors),
            "mlflow_version": model.mlflow_version,
            "serving": serving,
        }
        if entry is not None:
            info = self._native(serving).inspect(entry, options)
            metadata |= {"entry": entry.relative_to(path).as_posix(), "native": info.metadata}
            return ModelInfo(files, info.signature, metadata)
        _refuse_untrusted(model, trusted=options.trust_pickle)
        pyfunc = load_pyfunc(path)
        loaded, extra = describe_pyfunc(model, pyfunc, options)
        metadata |= extra
        metadata["loader_module"] = str(model.flavors[_PYFUNC].get("loader_module", ""))
        return ModelInfo(files, loaded.signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> Predictor:
        """Load the model by the serving path recorded at push time.

        Raises:
            As for ``inspect``; the pyfunc path is refused again unless the version was
            pushed with ``--trust-pickle``.
        """
        recorded = options.metadata
        serving = recorded.get("serving")
        entry = recorded.get("entry")
        if isinstance(serving, str) and serving != "pyfunc" and isinstance(entry, str):
            native = LoadOptions(
                intra_op_threads=options.intra_op_threads,
                inter_op_threads=options.inter_op_threads,
                extra=options.extra,
                metadata=dict(recorded.get("native") or {}),
                trust_pickle=options.trust_pickle,
                derived_dir=options.derived_dir,
                verify_derived=options.verify_derived,
            )
            return self._native(serving).load(path / entry, native)
        model = read_mlmodel(path)
        _refuse_untrusted(model, trusted=options.trust_pickle)
        signature = Signature.from_dict(recorded["signature"])
        kind = str(recorded.get("input_kind", "array"))
        columns = tuple(str(name) for name in recorded.get("columns", ()))
        return PyfuncModel(load_pyfunc(path), signature, kind, columns)


def _serving_path(model: MLModel) -> tuple[str, Path | None]:
    """``(format, entry file)`` for the first native flavor that applies (``NATIVE_FLAVORS``),
    else ``("pyfunc", None)``."""
    flavors = model.flavors
    for flavor, key, format_name, applies in NATIVE_FLAVORS:
        if flavor in flavors and applies(flavors[flavor]):
            return format_name, model.flavor_file(flavor, key)
    sklearn = flavors.get("sklearn")
    if _PYFUNC not in flavors:
        raise UnsupportedFormat(
            f"{model.directory.name}: MLflow flavors {', '.join(sorted(flavors))} have no "
            f"{_PYFUNC} flavor; modelport serves the onnx flavor, sklearn saved with skops, "
            f"xgboost, lightgbm text models, and models with a {_PYFUNC} flavor (with "
            "--trust-pickle)"
        )
    for key in _PYFUNC_FILES:
        if key in flavors[_PYFUNC]:
            model.flavor_file(_PYFUNC, key)
    if sklearn is not None:
        model.flavor_file("sklearn", "pickled_model")
    return "pyfunc", None


def _refuse_untrusted(model: MLModel, *, trusted: bool) -> None:
    if trusted:
        return
    flavors = ", ".join(sorted(model.flavors))
    fmt = model.flavors.get("sklearn", {}).get("serialization_format")
    how = f"flavors {flavors}" + (f"; sklearn serialized with {fmt}" if fmt else "")
    raise InvalidModel(
        f"{model.directory.name} is an MLflow model served through mlflow.pyfunc ({how}), "
        "and loading it unpickles code from the directory; push it with --trust-pickle if "
        f"you trust where it came from, or {_SAFE_FORMATS}"
    )
