"""The predictor of the scikit-learn formats: a fitted estimator's methods, by output."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput
from modelport.runtimes.sklearn.tabular import (
    LABEL,
    OUTPUT,
    PREDICTION,
    PROBABILITIES,
    TabularModel,
)
from modelport.types import DataType, Signature

__all__ = ["METHODS", "estimator_predictor"]

METHODS = {
    LABEL: "predict",
    PREDICTION: "predict",
    PROBABILITIES: "predict_proba",
    OUTPUT: "transform",
}


def estimator_predictor(estimator: Any, signature: Signature) -> TabularModel:
    """The predictor over a fitted ``estimator``: each output calls its method (``METHODS``).

    Thread-safe: a fitted estimator is only read while predicting.
    """
    frame = _frame_builder(getattr(estimator, "feature_names_in_", None))
    strings = signature.inputs[0].datatype is DataType.BYTES

    def compute(rows: npt.NDArray[Any], names: Sequence[str]) -> dict[str, Any]:
        data: Any = _as_strings(rows) if strings else rows
        if frame is not None:
            data = frame(data)
        return {name: getattr(estimator, METHODS[name])(data) for name in names}

    # scikit-learn reports values it cannot take (NaN, unknown categories, ...) as ValueError.
    return TabularModel(signature, compute, (ValueError,))


def _frame_builder(columns: Any) -> Callable[[Any], Any] | None:
    """A DataFrame maker for a model fitted on one, so it sees its own column names."""
    if columns is None:
        return None
    try:
        pandas = importlib.import_module("pandas")
    except ImportError:  # scikit-learn then warns that the rows have no feature names
        return None
    names = list(columns)
    return lambda rows: pandas.DataFrame(rows, columns=names)


def _as_strings(rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
    def decode(item: object) -> object:
        return item.decode("utf-8") if isinstance(item, bytes) else item

    try:
        return np.asarray(np.frompyfunc(decode, 1, 1)(rows), dtype=object)
    except UnicodeDecodeError:
        raise InvalidInput("BYTES inputs must be valid UTF-8 text") from None
