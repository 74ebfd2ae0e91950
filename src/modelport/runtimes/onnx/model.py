"""The predictor of the ``onnx`` format: an onnxruntime session."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput, Unavailable
from modelport.runtimes.onnx.inspect import short_message
from modelport.types import DataType, Signature, Tensors

__all__ = ["SOLO_QUIET_SECONDS", "OnnxModel"]

SOLO_QUIET_SECONDS = 0.5
"""How long calls must have come one at a time, one row each, before one takes the solo
session: long enough to span the gaps of closed-loop load, short enough that a lone client
gets every core within its first requests."""


class OnnxModel:
    """An ONNX model in an onnxruntime session: the ``Predictor`` of the ``onnx`` format.

    ``run`` may be called from many threads at once: onnxruntime's ``run`` is thread-safe
    and releases the GIL while it computes. BYTES inputs may hold ``bytes`` (UTF-8) or
    ``str``; BYTES outputs are object arrays of ``bytes``. Probability maps (scikit-learn's
    ZipMap) come back as 2-D FP32 arrays with one column per class, in sorted class order.

    With a ``solo_session`` (more threads, the same mapped weights), a single-row call that
    starts while no other call is running, after ``SOLO_QUIET_SECONDS`` in which none ran
    beside another or held more rows, runs there: a lone request gets every core, while
    concurrent ones run as independent single-threaded streams, which share the cores with
    less contention than calls sharing one many-threaded session (docs/performance.md).
    """

    def __init__(
        self,
        session: Any,
        signature: Signature,
        run_errors: tuple[type[Exception], ...],
        *,
        solo_session: Any = None,
    ) -> None:
        self._session: Any = session
        self._solo: Any = solo_session
        self._running = 0
        self._crowded_at = 0.0
        """When a call last started beside another, or with more than one row."""
        self._running_lock = threading.Lock()
        # An input whose first dimension is the batch, if any: it counts a call's rows.
        self._batch_input = next(
            (
                spec.name
                for spec in signature.inputs
                if spec.shape is not None and len(spec.shape) >= 1 and spec.shape[0] < 0
            ),
            None,
        )
        self._signature = signature
        self.input_errors = run_errors
        self._string_inputs = frozenset(
            spec.name for spec in signature.inputs if spec.datatype is DataType.BYTES
        )

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        return short_message(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        names = list(outputs)
        feed = {
            name: _to_strings(name, array) if name in self._string_inputs else array
            for name, array in inputs.items()
        }
        session = self._session
        if session is None:
            raise Unavailable("the model was closed; load it again to predict")
        if self._solo is None:
            results = session.run(names, feed)
        else:
            results = self._run_counted(session, names, feed, self._single_row(inputs))
        return {name: _from_result(value) for name, value in zip(names, results, strict=True)}

    def _single_row(self, inputs: Tensors) -> bool:
        # A merged batch is a sign of load: measured 9% fewer MiniLM requests/s at c=8
        # when merged batches starting alone ran on the solo session.
        name = self._batch_input
        return name is None or inputs[name].shape[0] <= 1

    def _run_counted(
        self, session: Any, names: list[str], feed: dict[str, Any], single_row: bool
    ) -> Any:
        now = time.monotonic()
        with self._running_lock:
            if self._running or not single_row:
                self._crowded_at = now
            # Under load a request often starts while nothing runs (the batch before it has
            # just answered); run there on every core, it would share them with the batch
            # that starts next. Only traffic that has run one row at a time for a while
            # (what c=1 sends) takes the solo session.
            alone = now - self._crowded_at > SOLO_QUIET_SECONDS
            self._running += 1
        try:
            solo = self._solo
            return (solo if alone and solo is not None else session).run(names, feed)
        finally:
            with self._running_lock:
                self._running -= 1

    @property
    def has_solo_session(self) -> bool:
        """Whether calls that run alone get a session of their own (see the class)."""
        return self._solo is not None

    def close(self) -> None:
        """Drop the sessions; their memory is freed once calls already running finish."""
        self._session = None
        self._solo = None


def _to_strings(name: str, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """An object array of ``str``: onnxruntime would turn ``bytes`` into "b'...'" text."""

    def decode(item: object) -> str:
        if isinstance(item, bytes):
            return item.decode("utf-8")
        if isinstance(item, str):
            return item
        raise InvalidInput(f"input {name!r}: BYTES elements must be bytes or str, not {item!r}")

    try:
        return np.asarray(np.frompyfunc(decode, 1, 1)(array), dtype=object)
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: BYTES elements must be valid UTF-8") from None


def _from_result(value: Any) -> npt.NDArray[Any]:
    if isinstance(value, list):  # only probability maps pass the signature as sequences
        classes = sorted(value[0]) if value else []
        rows = [[row[label] for label in classes] for row in value]
        return np.array(rows, dtype=np.float32).reshape(len(value), len(classes))
    array: npt.NDArray[Any] = value
    if array.dtype == object:
        return np.asarray(np.frompyfunc(_encode, 1, 1)(array), dtype=object)
    return array


def _encode(item: str) -> bytes:
    return item.encode("utf-8")
