"""What the tabular runtimes (scikit-learn, XGBoost, LightGBM) share.

A tabular model takes one 2-D input named ``input`` (one row per sample) and gives named
outputs with a leading batch dimension:

- ``label``: the predicted class (classifiers, clusterers, outlier detectors);
- ``probabilities``: FP32 ``[-1, n_classes]``, one column per class in class order;
- ``prediction``: what a regressor (or a booster with another objective) predicts;
- ``output``: what a transformer gives.

``TabularModel`` turns a framework's prediction function into a ``Predictor``: it runs only
what the requested outputs need, and conforms every output to the spec the signature
declares (cast, a lone column folded away).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput, InvalidModel, MissingDependency, Unavailable
from modelport.runtimes.base import (
    LoadOptions,
    ModelFiles,
    PushOptions,
    declared_signature,
)
from modelport.runtimes.checked import CheckedModel
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = [
    "INPUT",
    "LABEL",
    "OUTPUT",
    "PREDICTION",
    "PROBABILITIES",
    "Compute",
    "TabularModel",
    "import_framework",
    "resolve_signature",
    "short_message",
    "single_file",
    "thread_count",
]

INPUT = "input"
LABEL = "label"
PROBABILITIES = "probabilities"
PREDICTION = "prediction"
OUTPUT = "output"

Array = npt.NDArray[Any]
Compute = Callable[[Array, Sequence[str]], Mapping[str, Any]]
"""A framework's prediction: (the input rows, the output names wanted) -> raw outputs."""

# XGBoost prefixes its messages with "[12:00:00] /path/to/source.cc:409: ".
_NATIVE_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def import_framework(module: str, needs: str, extra: str) -> ModuleType:
    """Import an optional framework, or raise ``MissingDependency`` naming the extra.

    ``needs`` completes "serving ... needs ...", e.g. "XGBoost models needs xgboost".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"serving {needs}: pip install 'modelport[{extra}]'") from exc
    except OSError as exc:  # installed, but its native library does not load (e.g. no libgomp)
        raise MissingDependency(
            f"serving {needs}, whose native library could not be loaded ({short_message(exc)}); "
            f"reinstall it: pip install --force-reinstall 'modelport[{extra}]'"
        ) from exc


def single_file(path: Path) -> ModelFiles:
    """The files of a one-file model."""
    return ModelFiles(path.parent, path.name, (path.name,))


def short_message(exc: BaseException) -> str:
    """The first line of a framework's message, without native timestamps and source paths."""
    lines = str(exc).strip().splitlines()
    text = _NATIVE_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def thread_count(options: LoadOptions) -> int:
    """``intra_op_threads``, checked: 0 lets the framework choose."""
    if options.intra_op_threads < 0:
        raise InvalidInput(
            f"intra_op_threads must be 0 (the runtime chooses) or more, not "
            f"{options.intra_op_threads}"
        )
    return options.intra_op_threads


def _example_input(options: PushOptions, what: str) -> Array | None:
    """The one array of ``--example``, whatever its name; ``None`` without an example."""
    if options.example is None:
        return None
    if len(options.example) != 1:
        names = ", ".join(repr(name) for name in options.example) or "none"
        raise InvalidInput(
            f"a {what} model takes one 2-D input; the example must hold one array, not {names}"
        )
    (array,) = options.example.values()
    if array.ndim == 0 or array.shape[0] == 0:
        raise InvalidInput("the example input needs at least one row")
    return array


def _input_spec(width: int | None, example: Array | None, datatype: DataType) -> TensorSpec | None:
    """``input``: ``[-1, width]`` of ``datatype``, or of the example's dtype and row shape.

    ``None`` when neither the model nor an example tells the width.
    """
    if example is None:
        return None if width is None else TensorSpec(INPUT, datatype, (-1, width))
    if width is not None and (example.ndim != 2 or example.shape[1] != width):
        shape = ", ".join(str(d) for d in example.shape)
        raise InvalidInput(
            f"the example input has shape [{shape}]; the model takes [-1, {width}] "
            f"(one row of {width} features per sample)"
        )
    return TensorSpec(INPUT, DataType.from_numpy(example.dtype), (-1, *example.shape[1:]))


def _check_declared(declared: Signature, outputs: Sequence[TensorSpec], width: int | None) -> None:
    """Check that ``--signature`` fits what the model gives: one input, our output names.

    The input may be renamed and given any datatype the framework takes; outputs may be a
    subset of the model's and declare their own datatypes (outputs are cast to them).

    Raises:
        InvalidInput: naming what the model takes and gives.
    """
    if len(declared.inputs) != 1:
        raise InvalidInput(
            f"--signature lists {len(declared.inputs)} inputs; this model takes one 2-D input "
            "(one row of features per sample)"
        )
    shape = declared.inputs[0].shape
    if width is not None and shape is not None and (len(shape) != 2 or shape[1] not in (-1, width)):
        raise InvalidInput(f"--signature: the model's input has shape [-1, {width}]")
    known = [spec.name for spec in outputs]
    unknown = [spec.name for spec in declared.outputs if spec.name not in known]
    if unknown or not declared.outputs:
        valid = ", ".join(repr(name) for name in known)
        raise InvalidInput(f"--signature outputs must be among this model's outputs: {valid}")


def resolve_signature(
    options: PushOptions,
    what: str,
    outputs: Sequence[TensorSpec],
    width: int | None,
    build: Callable[[Signature], TabularModel],
    *,
    learn: bool,
    datatype: DataType = DataType.FP32,
) -> Signature:
    """The signature to record for a tabular model that gives ``outputs``.

    ``--signature`` wins (checked by ``_check_declared``). Otherwise the input is ``datatype``
    ``[-1, width]``, or takes the example's dtype and row shape. An example is run once
    through ``build(signature)``; with ``learn``, output datatypes and shapes are then what
    the framework gave (probabilities stay FP32).

    Raises:
        InvalidInput: a --signature that does not fit, an example that does not run, or
            neither when the model does not tell its number of features.
    """
    example = _example_input(options, what)
    if options.signature is not None:
        _check_declared(options.signature, outputs, width)
        if example is not None:
            checked = CheckedModel(build(options.signature))
            checked.predict({options.signature.inputs[0].name: example})
        return options.signature
    spec = _input_spec(width, example, datatype)
    if spec is None:
        return declared_signature(options, what)
    signature = Signature((spec,), tuple(outputs))
    if example is None:
        return signature
    raw = build(signature).run_raw({INPUT: example})
    if not learn:
        return signature
    return Signature((spec,), tuple(_learned(output, raw[output.name]) for output in outputs))


def _learned(spec: TensorSpec, array: Array) -> TensorSpec:
    if spec.name == PROBABILITIES:
        return spec
    return TensorSpec(spec.name, DataType.from_numpy(array.dtype), (-1, *array.shape[1:]))


class TabularModel:
    """The ``Predictor`` over a framework's prediction function (see ``Compute``): runs only
    what the requested outputs need and conforms each output to its declared spec.

    Thread-safe when ``compute`` is: each runtime says so for its framework.
    """

    def __init__(
        self, signature: Signature, compute: Compute, errors: tuple[type[Exception], ...]
    ) -> None:
        self._signature = signature
        self._compute: Compute | None = compute
        self.input_errors = errors
        self._input = signature.inputs[0].name
        self._outputs = {spec.name: spec for spec in signature.outputs}

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        return short_message(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> dict[str, Array]:
        raw = self._compute_outputs(inputs, list(outputs))
        return {name: conform(self._outputs[name], raw[name]) for name in outputs}

    def run_raw(self, inputs: Tensors) -> dict[str, Array]:
        """Every output as the framework gives it (densified), to learn a signature from.

        Raises:
            InvalidInput: inputs that do not match the signature or that the framework
                rejects, saying the example input is the problem.
        """
        self._signature.validate(inputs)
        names = list(self._outputs)
        try:
            raw = self._compute_outputs(inputs, names)
        except self.input_errors as exc:
            message = f"the example input does not run through the model: {short_message(exc)}"
            raise InvalidInput(message) from exc
        return {name: dense(raw[name]) for name in names}

    def _compute_outputs(self, inputs: Tensors, names: list[str]) -> Mapping[str, Any]:
        compute = self._compute
        if compute is None:
            raise Unavailable("the model was closed; load it again to predict")
        return compute(inputs[self._input], names)

    def close(self) -> None:
        """Drop the framework's model; calls already running finish first."""
        self._compute = None


def dense(value: Any) -> Array:
    """A numpy array from a framework's result (scipy sparse matrices are densified)."""
    if hasattr(value, "toarray"):
        value = value.toarray()
    return np.asarray(value)


def conform(spec: TensorSpec, value: Any) -> Array:
    """``value`` as ``spec`` declares it: cast to its datatype, a lone column folded away."""
    array = dense(value)
    if spec.datatype is DataType.BYTES:
        result = np.asarray(np.frompyfunc(_to_bytes, 1, 1)(array), dtype=object)
    else:
        result = array.astype(spec.datatype.numpy, copy=False)
    if spec.accepts_shape(result.shape):
        return result
    if spec.shape is not None and result.ndim >= 1:
        rows = result.shape[0]
        fixed = spec.shape[1:]
        if all(d >= 0 for d in fixed) and result.size == rows * int(np.prod(fixed)):
            return result.reshape((rows, *fixed))
    got = ", ".join(str(d) for d in result.shape)
    raise InvalidModel(
        f"output {spec.name!r}: the model gave shape [{got}] but its signature says "
        f"{spec.shape_text()}; push it again with --example, or a --signature that matches"
    )


def _to_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    return str(item).encode("utf-8")
