"""The predictor of the ``caffe`` format: a pool of OpenCV nets."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelport.errors import Unavailable
from modelport.runtimes.caffe.signature import short_message
from modelport.types import Signature, Tensors

__all__ = ["CaffeModel"]


class CaffeModel:
    """A Caffe net in OpenCV: the ``Predictor`` of the ``caffe`` format.

    A ``cv2.dnn.Net`` is not thread-safe, so each forward pass takes a Net of its own from a
    pool: the one built at load, and more built (from the stored files) when calls overlap.
    The pool grows to the most calls ever run at once (the serving layer's instances), each
    Net holding its own copy of the weights. ``run`` may be called from many threads.
    """

    def __init__(
        self,
        open_net: Callable[[], Any],
        signature: Signature,
        run_errors: tuple[type[Exception], ...],
    ) -> None:
        self._open_net = open_net
        self._idle: list[Any] = [open_net()]
        self._closed = False
        self._lock = threading.Lock()  # guards _idle and _closed, never a forward pass
        self._signature = signature
        self.input_errors = run_errors

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        return short_message(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        net = self._take()
        # On a failure the Net is dropped, not pooled: OpenCV does not say what state a
        # failure leaves it in.
        for name, array in inputs.items():
            net.setInput(np.ascontiguousarray(array), name)
        results = net.forward(list(outputs))
        self._give(net)
        return {name: np.asarray(result) for name, result in zip(outputs, results, strict=True)}

    def close(self) -> None:
        """Drop the Nets; calls already running finish on theirs."""
        with self._lock:
            self._closed = True
            self._idle.clear()

    def _take(self) -> Any:
        with self._lock:
            if self._closed:
                raise Unavailable("the model was closed; load it again to predict")
            if self._idle:
                return self._idle.pop()
        return self._open_net()  # outside the lock: other calls go on meanwhile

    def _give(self, net: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(net)
