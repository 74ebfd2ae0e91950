"""The predictor of the boosting formats: a booster's prediction, read by its objective."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.runtimes.sklearn.tabular import (
    LABEL,
    PREDICTION,
    PROBABILITIES,
    TabularModel,
)
from modelport.types import DataType, Signature, TensorSpec

__all__ = ["Array", "Booster", "Task", "softmax"]

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Task:
    """What the objective makes of a booster's output: binary, multiclass, regression, raw."""

    kind: str
    classes: int = 2
    targets: int = 1

    def outputs(self, prediction: DataType) -> tuple[TensorSpec, ...]:
        if self.kind in ("binary", "multiclass"):
            return (
                TensorSpec(LABEL, DataType.INT64, (-1,)),
                TensorSpec(PROBABILITIES, DataType.FP32, (-1, self.classes)),
            )
        shape: tuple[int, ...] = (-1, -1)
        if self.kind == "regression":
            shape = (-1,) if self.targets == 1 else (-1, self.targets)
        return (TensorSpec(PREDICTION, prediction, shape),)

    def results(self, value: Array) -> dict[str, Array]:
        """Our outputs from the booster's prediction (class probabilities for classifiers)."""
        if self.kind == "binary":
            return {
                LABEL: (value > 0.5).astype(np.int64),
                PROBABILITIES: np.column_stack((1 - value, value)),
            }
        if self.kind == "multiclass":
            return {LABEL: np.argmax(value, axis=1), PROBABILITIES: value}
        if self.kind == "regression":
            return {PREDICTION: value}
        return {PREDICTION: value.reshape(len(value), -1)}


@dataclass(frozen=True, slots=True)
class Booster:
    """A booster read from its file: how to predict, and what it records about itself."""

    predict: Callable[[Array], Array]
    errors: tuple[type[Exception], ...]
    task: Task
    width: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def build(self, signature: Signature) -> TabularModel:
        task, predict = self.task, self.predict
        return TabularModel(
            signature, lambda rows, _names: task.results(predict(rows)), self.errors
        )


def softmax(margin: Array) -> Array:
    exp = np.exp(margin - margin.max(axis=1, keepdims=True))
    result: Array = exp / exp.sum(axis=1, keepdims=True)
    return result
