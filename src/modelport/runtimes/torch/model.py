"""The predictor of the torch formats: a module or program called under inference mode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidModel, Unavailable
from modelport.runtimes.torch.signature import (
    TORCH_DATATYPES,
    flatten_outputs,
    short_message,
)
from modelport.types import Signature, Tensors

__all__ = ["TorchModel"]

# What torch raises for inputs a model cannot take (shape and dtype mismatches, failed
# guards of exported programs, out-of-range indices); torch.jit.Error is a RuntimeError.
_RUN_ERRORS = (RuntimeError, ValueError, AssertionError, IndexError)


class TorchModel:
    """A PyTorch module ready for inference: the ``Predictor`` of the torch formats.

    Inputs reach torch without a copy when they are writable and C-contiguous (a model that
    writes into its inputs then writes into the caller's arrays); read-only or strided
    arrays are copied first. ``run`` may be called from many threads at once.
    """

    input_errors = _RUN_ERRORS

    def __init__(
        self,
        torch: Any,
        call: Callable[[list[Any]], Any],
        signature: Signature,
        input_order: list[str],
    ) -> None:
        self._torch = torch
        self._call: Callable[[list[Any]], Any] | None = call
        self._signature = signature
        self._input_order = input_order
        self._output_names = signature.output_names()

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        return short_message(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        call = self._call
        if call is None:
            raise Unavailable("the model was closed; load it again to predict")
        torch = self._torch
        tensors = [torch.from_numpy(_shareable(inputs[name])) for name in self._input_order]
        with torch.inference_mode():
            result = call(tensors)
        leaves = list(flatten_outputs(result))
        expected = self._output_names
        if len(leaves) != len(expected) or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise InvalidModel(
                f"the model gave {len(leaves)} value(s) where its signature lists "
                f"{len(expected)} tensor(s): {', '.join(expected)}"
            )
        by_name = dict(zip(expected, leaves, strict=True))
        return {name: self._to_numpy(by_name[name]) for name in outputs}

    def close(self) -> None:
        """Drop the module; its memory is freed once calls already running finish."""
        self._call = None

    def _to_numpy(self, tensor: Any) -> npt.NDArray[Any]:
        if str(tensor.dtype) not in TORCH_DATATYPES:  # e.g. bfloat16 under a declared FP32
            tensor = tensor.to(self._torch.float32)
        array: npt.NDArray[Any] = tensor.detach().numpy()
        return array


def _shareable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array`` itself when torch can share it, else a C-contiguous copy."""
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C", copy=True)
