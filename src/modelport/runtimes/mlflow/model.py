"""The pyfunc path of the ``mlflow`` runtime: models loaded with ``mlflow.pyfunc.load_model``.

Tensors are fed to pyfunc as the signature's ``input_kind`` says (see ``mlflow.signature``):
one array, a dict of arrays, or a pandas DataFrame; BYTES become ``str``. What ``predict``
returns (an array, a list, a Series, a DataFrame or a dict) is split into the signature's
outputs by name (dict keys, DataFrame columns) or, for one output, taken whole, then cast
to the declared datatypes.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import (
    InvalidInput,
    InvalidModel,
    MissingDependency,
    ModelportError,
    Unavailable,
)
from modelport.runtimes.base import PushOptions
from modelport.runtimes.checked import CheckedModel
from modelport.runtimes.mlflow.signature import (
    PREDICTIONS,
    MLModel,
    recorded_signature,
    saved_example,
)
from modelport.runtimes.sklearn.tabular import conform, short_message
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = ["PyfuncModel", "describe_pyfunc", "load_pyfunc"]


class PyfuncModel:
    """A model loaded with ``mlflow.pyfunc.load_model``: the ``Predictor`` of the pyfunc path.

    ``run`` takes one call at a time (a lock): a custom ``PythonModel`` may keep state,
    and pyfunc makes no promise about threads. The model's own code may raise anything on
    bad input, so every exception it raises counts as an input error.
    """

    input_errors: tuple[type[Exception], ...] = (Exception,)

    def __init__(self, model: Any, signature: Signature, kind: str, columns: tuple[str, ...]):
        self._model: Any = model
        self._signature = signature
        self._kind = kind
        self._columns = columns
        self._lock = threading.Lock()
        self._outputs = {spec.name: spec for spec in signature.outputs}

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        return short_message(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        raw = self._predict(inputs)
        return {name: conform(self._outputs[name], raw[name]) for name in outputs}

    def run_raw(self, inputs: Tensors) -> dict[str, Any]:
        """Every output as the model gives it, before casting to the signature.

        Raises:
            InvalidInput: inputs that do not match the signature or that the model rejects.
        """
        self._signature.validate(inputs)
        try:
            return self._predict(inputs)
        except ModelportError:
            raise
        except Exception as exc:
            message = f"the model could not run on these inputs: {short_message(exc)}"
            raise InvalidInput(message) from exc

    def _predict(self, inputs: Tensors) -> dict[str, Any]:
        data = _pyfunc_input(inputs, self._signature, self._kind, self._columns)
        with self._lock:
            model = self._model
            if model is None:
                raise Unavailable("the model was closed; load it again to predict")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = model.predict(data)
        return _split(result, list(self._outputs))

    def close(self) -> None:
        """Drop the pyfunc model; a call already running finishes first."""
        with self._lock:
            self._model = None


def load_pyfunc(path: Path) -> Any:
    """``mlflow.pyfunc.load_model(path)``; call only for versions pushed trusted.

    Raises:
        MissingDependency: mlflow (or what its pyfunc module needs, e.g. pandas) is missing.
        InvalidModel: loading failed.
    """
    try:
        with warnings.catch_warnings():  # its import-time advice on type hints
            warnings.simplefilter("ignore")
            pyfunc = importlib.import_module("mlflow.pyfunc")
    except ImportError as exc:
        missing = exc.name or "mlflow"
        needs = "mlflow" if missing.split(".")[0] == "mlflow" else f"mlflow and {missing}"
        raise MissingDependency(
            f"serving MLflow models through mlflow.pyfunc needs {needs}: "
            "pip install 'modelport[mlflow]'"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pyfunc.load_model(str(path))
    except Exception as exc:  # unpickling runs the directory's code, which may raise anything
        message = f"mlflow.pyfunc could not load {path.name}: {short_message(exc)}"
        raise InvalidModel(message) from exc


def describe_pyfunc(
    model: MLModel, pyfunc: Any, options: PushOptions
) -> tuple[PyfuncModel, dict[str, Any]]:
    """The loaded model and the metadata ``MLflowRuntime.load`` needs to rebuild it.

    The signature is ``--signature``, else ``MLmodel``'s, else learnt by running the example
    (``--example`` or the saved one). An example is always run once.

    Raises:
        InvalidInput: no signature and no example, or an example the model rejects.
        InvalidModel, UnsupportedFormat: a recorded signature that cannot be served.
    """
    recorded = recorded_signature(model)
    kind, columns = ("array", ()) if recorded is None else (recorded.input_kind, recorded.columns)
    example = options.example
    if options.signature is not None:
        signature = options.signature
        if kind != "frame" or len(signature.inputs) != 1:
            kind, columns = ("array" if len(signature.inputs) == 1 else "dict"), ()
    elif recorded is not None:
        signature = recorded.signature
    else:
        example = example or saved_example(model)
        if example is None:
            raise InvalidInput(
                f"{model.directory.name} records no signature and no input example; give an "
                "example input with --example x.npz, or the signature with --signature sig.json"
            )
        kind = "array" if len(example) == 1 else "dict"
        signature = _learned_signature(pyfunc, example, kind)
    loaded = PyfuncModel(pyfunc, signature, kind, columns)
    if example is not None:  # an example that does not run is refused at push
        CheckedModel(loaded).predict(example)
    metadata = {"signature": signature.to_dict(), "input_kind": kind, "columns": list(columns)}
    return loaded, metadata


def _learned_signature(pyfunc: Any, example: Tensors, kind: str) -> Signature:
    """Inputs shaped like the example's rows; outputs as the model gives them for it."""
    inputs = tuple(
        TensorSpec(name, DataType.from_numpy(array.dtype), (-1, *array.shape[1:]))
        for name, array in example.items()
    )
    anything = (TensorSpec(PREDICTIONS, DataType.FP64, None),)
    raw = PyfuncModel(pyfunc, Signature(inputs, anything), kind, ()).run_raw(example)
    outputs = []
    for name, value in raw.items():
        array = np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value)
        outputs.append(TensorSpec(name, DataType.from_numpy(array.dtype), (-1, *array.shape[1:])))
    return Signature(inputs, tuple(outputs))


def _pyfunc_input(
    inputs: Tensors, signature: Signature, kind: str, columns: tuple[str, ...]
) -> Any:
    texts = {
        name: _as_text(array) if array.dtype.kind in "OS" else array
        for name, array in inputs.items()
    }
    if kind == "array":
        return texts[signature.inputs[0].name]
    if kind == "dict":
        return texts
    pandas = importlib.import_module("pandas")  # mlflow.pyfunc imports it already
    if kind == "frame":
        return pandas.DataFrame(texts[signature.inputs[0].name], columns=list(columns))
    return pandas.DataFrame(texts)


def _as_text(array: Any) -> Any:
    def decode(item: object) -> object:
        return item.decode("utf-8") if isinstance(item, bytes) else item

    try:
        return np.asarray(np.frompyfunc(decode, 1, 1)(array), dtype=object)
    except UnicodeDecodeError:
        raise InvalidInput("BYTES inputs must be valid UTF-8 text") from None


def _split(result: Any, names: list[str]) -> dict[str, Any]:
    """The model's result by output name: a dict's keys, a DataFrame's columns, or one array."""
    if isinstance(result, dict):
        if set(names) <= set(result):
            return {name: result[name] for name in names}
        if len(names) == 1 and len(result) == 1:
            return {names[0]: next(iter(result.values()))}
    elif hasattr(result, "columns") and hasattr(result, "to_numpy"):  # a pandas DataFrame
        found = [str(column) for column in result.columns]
        if set(names) <= set(found):
            return {name: result[name].to_numpy() for name in names}
        if len(names) == 1:
            return {names[0]: result.to_numpy()}
    elif len(names) == 1:
        return {names[0]: result.to_numpy() if hasattr(result, "to_numpy") else np.asarray(result)}
    valid = ", ".join(repr(name) for name in names)
    raise InvalidModel(
        f"the model gave a {type(result).__name__} that does not hold its outputs {valid}; "
        "push it again with a --signature whose outputs match what predict returns"
    )
