"""Calibration data for static int8: rows of a ``Feed`` handed to onnxruntime's calibrator."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelport.optimization.progress import Advance
from modelport.types import Tensors

__all__ = ["DEFAULT_CALIBRATION_ROWS", "reader"]

DEFAULT_CALIBRATION_ROWS = 256
CHUNK = 16
"""Rows per calibration call: fewer calls, and no single huge batch."""


def reader(inputs: Tensors, chunk: int = CHUNK, advance: Advance | None = None) -> Any:
    """A fresh ``onnxruntime.quantization.CalibrationDataReader`` over ``inputs`` (graph
    input name -> rows on axis 0), ``chunk`` rows per call (1 for a graph whose batch
    dimension is fixed at 1); ``advance`` is told the rows read."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.rows = len(next(iter(inputs.values())))
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= self.rows:
                return None
            stop = min(self.start + chunk, self.rows)
            batch = {
                name: np.ascontiguousarray(array[self.start : stop])
                for name, array in inputs.items()
            }
            if advance is not None:
                advance(stop - self.start)
            self.start = stop
            return batch

        def rewind(self) -> None:
            self.start = 0

    return _Reader()
