"""Parity: does a derived model compute what its parent computes, on the same inputs?

The check a derive job (``jobs.derive``) runs when the new version must behave like the old
one (a conversion, an optimization). Both models run on the same inputs (see ``inputs``),
and every output of the source is compared with the derived model's output of the same name:

- floating-point outputs agree element by element within ``|derived - source| <= abs +
  rel * |source|`` (NaN matching NaN); the tolerance is that of the coarser of the two
  datatypes (``DEFAULT_TOLERANCES``) unless one value overrides both;
- ``label`` outputs (classifiers, clusterers) must agree on at least ``LABEL_AGREEMENT`` of
  the rows: a probability on the edge of a decision may round the other way;
- other integer, boolean and BYTES outputs must match exactly;
- an output the derived model does not give, or gives in another shape, fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput, InvalidModel
from modelport.runtimes import LoadedModel
from modelport.types import DataType, Tensors, TensorSpec

__all__ = [
    "DEFAULT_TOLERANCES",
    "LABEL_AGREEMENT",
    "OutputParity",
    "ParityReport",
    "Tolerance",
    "compare",
]

Array = npt.NDArray[Any]

LABEL = "label"
LABEL_AGREEMENT = 0.99
CHUNK_ROWS = 32
"""Rows run per call, so a dataset of large inputs is not one huge batch."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far a floating-point value may stray: ``|a - b| <= absolute + relative * |b|``."""

    absolute: float
    relative: float


DEFAULT_TOLERANCES: dict[DataType, Tolerance] = {
    DataType.FP16: Tolerance(1e-2, 1e-2),
    DataType.FP32: Tolerance(1e-4, 1e-3),
    DataType.FP64: Tolerance(1e-6, 1e-6),
}
_PRECISION = [DataType.FP16, DataType.FP32, DataType.FP64]  # coarsest first


@dataclass(frozen=True, slots=True)
class OutputParity:
    """How one output compares. ``problem`` is empty when it passed."""

    name: str
    max_abs: float | None = None
    """Floating-point outputs: the largest absolute difference."""
    max_rel: float | None = None
    """Floating-point outputs: the largest difference relative to the source's value, over
    values larger than the absolute tolerance (smaller ones are judged by ``max_abs``)."""
    agreement: float | None = None
    """Exact outputs and labels: the fraction of rows that are equal."""
    tolerance: Tolerance | None = None
    problem: str = ""

    @property
    def passed(self) -> bool:
        return not self.problem


@dataclass(frozen=True, slots=True)
class ParityReport:
    """The comparison of every output of the source with the derived model's."""

    rows: int
    inputs: str
    """Where the inputs came from: ``generated`` or the dataset's file name."""
    outputs: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    def metrics(self) -> dict[str, Any]:
        """The report as flat metrics, e.g. ``parity.max_abs.probabilities``."""
        metrics: dict[str, Any] = {"parity.passed": self.passed, "parity.rows": self.rows}
        for output in self.outputs:
            for key in ("max_abs", "max_rel", "agreement"):
                value = getattr(output, key)
                if value is not None:
                    metrics[f"parity.{key}.{output.name}"] = value
            if output.name == LABEL and output.agreement is not None:
                metrics["parity.label_agreement"] = output.agreement
        return metrics

    def failures(self) -> str:
        """One clause per failing output, e.g. for an error message."""
        return "; ".join(f"{o.name!r}: {o.problem}" for o in self.outputs if not o.passed)


def compare(
    source: LoadedModel,
    derived: LoadedModel,
    inputs: Tensors,
    *,
    tolerance: float | None = None,
    origin: str = "generated",
) -> ParityReport:
    """Run both models on ``inputs`` and compare each of the source's outputs.

    ``tolerance`` replaces the per-datatype absolute and relative tolerances; ``origin``
    says where the inputs came from (see ``parity_inputs``).

    Raises:
        InvalidInput: the source model refuses the inputs (a dataset that does not fit).
        InvalidModel: the derived model cannot run on inputs the source takes.
    """
    expected = _run_chunked(source, inputs)
    try:
        actual = _run_chunked(derived, inputs)
    except InvalidInput as exc:
        message = f"the derived model cannot run on the inputs its source takes: {exc}"
        raise InvalidModel(message) from exc
    given = {spec.name: spec.datatype for spec in derived.signature.outputs}
    results = tuple(
        _compare_output(spec, expected[spec.name], actual.get(spec.name), given, tolerance)
        for spec in source.signature.outputs
    )
    rows = len(next(iter(inputs.values()))) if inputs else 0
    return ParityReport(rows, origin, results)


def _run_chunked(model: LoadedModel, inputs: Tensors) -> dict[str, Array]:
    first = model.signature.inputs[0] if model.signature.inputs else None
    fixed = bool(first is not None and first.shape and first.shape[0] >= 0)
    total = len(next(iter(inputs.values()))) if inputs else 0
    if fixed or total <= CHUNK_ROWS:
        return dict(model.predict(inputs))
    parts = [
        model.predict({name: array[start : start + CHUNK_ROWS] for name, array in inputs.items()})
        for start in range(0, total, CHUNK_ROWS)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _compare_output(
    spec: TensorSpec,
    expected: Array,
    actual: Array | None,
    given: Mapping[str, DataType],
    tolerance: float | None,
) -> OutputParity:
    name = spec.name
    if actual is None:
        return OutputParity(name, problem="the derived model does not give this output")
    if actual.shape != expected.shape:
        return OutputParity(
            name, problem=f"shape {_shape(actual)} where the source gives {_shape(expected)}"
        )
    derived_type = given.get(name, DataType.from_numpy(actual.dtype))
    if spec.datatype in DEFAULT_TOLERANCES and derived_type in DEFAULT_TOLERANCES:
        coarser = min(spec.datatype, derived_type, key=_PRECISION.index)
        allowed = DEFAULT_TOLERANCES[coarser]
        if tolerance is not None:
            allowed = Tolerance(tolerance, tolerance)
        return _compare_floats(name, expected, actual, allowed)
    return _compare_exact(name, expected, actual)


def _compare_floats(name: str, expected: Array, actual: Array, allowed: Tolerance) -> OutputParity:
    want = expected.astype(np.float64)
    got = actual.astype(np.float64)
    both_nan = np.isnan(want) & np.isnan(got)
    with np.errstate(invalid="ignore"):
        error = np.where(both_nan, 0.0, np.abs(got - want))
    error = np.where(np.isnan(error), np.inf, error)
    magnitude = np.abs(np.where(both_nan, 0.0, want))
    big = magnitude > allowed.absolute
    max_abs = float(error.max(initial=0.0))
    max_rel = float((error[big] / magnitude[big]).max(initial=0.0))
    within = error <= allowed.absolute + allowed.relative * magnitude
    problem = ""
    if not bool(within.all()):
        problem = (
            f"max abs error {max_abs:.3g} (tolerance {allowed.absolute:g}), max rel error "
            f"{max_rel:.3g} (tolerance {allowed.relative:g}); {int((~within).sum())} of "
            f"{within.size} values outside"
        )
    return OutputParity(
        name,
        max_abs=_finite(max_abs),
        max_rel=_finite(max_rel),
        tolerance=allowed,
        problem=problem,
    )


def _compare_exact(name: str, expected: Array, actual: Array) -> OutputParity:
    equal = expected == actual
    if equal.ndim > 1:
        equal = equal.reshape(len(equal), -1).all(axis=1)
    agreement = float(np.mean(equal)) if equal.size else 1.0
    required = LABEL_AGREEMENT if name == LABEL else 1.0
    problem = ""
    if agreement < required:
        need = "at least 99%" if name == LABEL else "all"
        problem = f"{agreement:.1%} of rows agree; {need} must"
    return OutputParity(name, agreement=agreement, problem=problem)


def _finite(value: float) -> float:
    # JSON (and PostgreSQL's JSON type) has no infinity; a failed comparison is never stored.
    return value if math.isfinite(value) else float(np.finfo(np.float64).max)


def _shape(array: Array) -> str:
    return "[" + ", ".join(str(d) for d in array.shape) + "]"
