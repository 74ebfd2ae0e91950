"""Running Keras and TensorFlow models: the lazy TensorFlow import (its native log noise
filtered), the process-wide thread pools, and a model traced once into a concrete function
that is the ``Predictor`` of both formats."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from modelport.errors import InvalidInput, InvalidModel, MissingDependency, Unavailable
from modelport.runtimes.base import LoadOptions
from modelport.runtimes.tensorflow.signature import short_message
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = ["MISSING", "TensorFlowModel", "import_tensorflow", "set_threads"]

log = logging.getLogger(__name__)

MISSING = (
    "serving Keras and TensorFlow models needs TensorFlow, which is missing: "
    "pip install 'modelport[tensorflow]'"
)
_NATIVE_NOISE = re.compile(
    rb"All log messages before absl::InitializeLog\(\)|oneDNN custom operations are on"
)
_stderr_lock = threading.Lock()

# What TensorFlow accepts as a placeholder's name; other input names trace unnamed.
_OP_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*")


class TensorFlowModel:
    """``call`` traced once, for the signature's inputs, into one concrete function.

    Tracing up front means every ``run`` runs the same graph without retracing or the
    Python of Keras' layers, with the GIL released while TensorFlow computes; ``run`` may
    be called from several threads at once.

    Args:
        call: takes the input tensors in the signature's order; returns a dict (by output
            name), a list or tuple (in the signature's order) or one tensor.
        keep: the object owning the variables (Keras model, loaded SavedModel), kept alive
            as long as this model is.
    """

    def __init__(
        self,
        tf: Any,
        call: Callable[..., Any],
        signature: Signature,
        output_kind: str,
        keep: Any,
    ) -> None:
        self._tf = tf
        self._signature = signature
        self._output_names = signature.output_names()
        names = self._output_names

        def flat(*tensors: Any) -> list[Any]:
            result = call(*tensors)
            if isinstance(result, dict):
                return [result[name] for name in names]
            return list(result) if isinstance(result, (list, tuple)) else [result]

        specs = [_tensor_spec(tf, spec) for spec in signature.inputs]
        traced = tf.function(flat, input_signature=specs, autograph=False)
        try:
            self._function: Any = traced.get_concrete_function()
        except Exception as exc:  # tracing raises whatever the model's Python raises
            message = f"the model could not be traced for its signature: {short_message(exc)}"
            raise InvalidModel(message) from exc
        self._keep: Any = keep
        self.input_errors: tuple[type[Exception], ...] = (tf.errors.OpError, ValueError, TypeError)

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        return short_message(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        function = self._function
        if function is None:
            raise Unavailable("the model was closed; load it again to predict")
        tensors = [inputs[spec.name] for spec in self._signature.inputs]
        results = function(*tensors)
        if len(results) != len(self._output_names):
            raise InvalidModel(
                f"the model gave {len(results)} tensor(s) where its signature lists "
                f"{len(self._output_names)}: {', '.join(self._output_names)}"
            )
        by_name = dict(zip(self._output_names, results, strict=True))
        return {name: np.asarray(by_name[name].numpy()) for name in outputs}

    def close(self) -> None:
        """Drop the function and the model; memory is freed once running calls finish."""
        self._function = None
        self._keep = None


def _tensor_spec(tf: Any, spec: TensorSpec) -> Any:
    shape = None if spec.shape is None else [None if dim < 0 else dim for dim in spec.shape]
    name = spec.name if _OP_NAME.fullmatch(spec.name) else None
    dtype = tf.string if spec.datatype is DataType.BYTES else tf.as_dtype(spec.datatype.numpy)
    return tf.TensorSpec(shape, dtype, name=name)


def import_tensorflow() -> Any:
    """``tensorflow``, imported with its C++ log quietened to errors (unless set otherwise).

    Raises:
        MissingDependency: naming the ``tensorflow`` extra.
    """
    # TensorFlow reads this once, when its C++ library loads; users may still override it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _native_noise_filtered():
            import tensorflow as tf
    except ImportError as exc:
        raise MissingDependency(MISSING) from exc
    return tf


@contextlib.contextmanager
def _native_noise_filtered() -> Iterator[None]:
    """Drop the lines TensorFlow 2.21's C++ library prints on import whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says (absl's "before InitializeLog" warning, oneDNN's notice).

    File descriptor 2 goes to a temporary file while TensorFlow is first imported; what else
    was written there meanwhile (by any thread) is written back to stderr afterwards.
    """
    if "tensorflow" in sys.modules:
        yield
        return
    with _stderr_lock, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.readlines() if not _NATIVE_NOISE.search(line)]
            if kept:
                os.write(2, b"".join(kept))


_threads_lock = threading.Lock()
_threads_chosen: dict[str, int] = {}


def set_threads(options: LoadOptions) -> None:
    """Set TensorFlow's process-wide thread pools from ``options`` if it is still possible
    (before TensorFlow has run anything); else keep them and log a warning.

    Raises:
        InvalidInput: a negative count.
    """
    wanted = {"intra": options.intra_op_threads, "inter": options.inter_op_threads}
    for kind, value in wanted.items():
        if value < 0:
            raise InvalidInput(f"{kind}_op_threads must be 0 (the runtime chooses) or more")
    if not any(wanted.values()):
        return
    tf = import_tensorflow()
    setters = {
        "intra": tf.config.threading.set_intra_op_parallelism_threads,
        "inter": tf.config.threading.set_inter_op_parallelism_threads,
    }
    with _threads_lock:
        for kind, value in wanted.items():
            chosen = _threads_chosen.get(kind, 0)
            if value in (0, chosen):
                continue
            try:
                if chosen:
                    raise RuntimeError("already set")
                setters[kind](value)
                _threads_chosen[kind] = value
            except RuntimeError:
                log.warning(
                    "TensorFlow's %s-op thread count is one per process and fixed once it "
                    "has run; a model asking for %d runs with the count already in use",
                    kind,
                    value,
                )
