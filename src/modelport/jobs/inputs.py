"""The inputs a parity check runs both models on: rows of a dataset, or generated ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput
from modelport.tensorio import read_tensors
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = ["GENERATED_ROWS", "generated_inputs", "parity_inputs"]

GENERATED_ROWS = 16
"""Rows generated for a dynamic batch dimension; other dynamic dimensions get ``OTHER_DIM``."""
OTHER_DIM = 8


def parity_inputs(signature: Signature, dataset: Path | None, rows: int) -> tuple[Tensors, str]:
    """The inputs to compare on: the first ``rows`` rows of ``dataset`` (a ``.npz`` with one
    array per input name, or a ``.npy`` for a one-input model), else generated ones.

    Floating-point arrays are cast to the datatype the model takes (features are often
    saved as float64 for a float32 model); anything else must match the signature.

    Raises:
        InvalidInput: an unreadable dataset, one that does not fit the signature, or ``rows``
            below 1.
    """
    if rows < 1:
        raise InvalidInput(f"rows must be 1 or more, not {rows}")
    if dataset is None:
        return generated_inputs(signature), "generated"
    if dataset.suffix.lower() not in (".npz", ".npy"):
        raise InvalidInput(f"--dataset must be a .npz or .npy file, not {dataset.name}")
    tensors = read_tensors(str(dataset), signature)
    for name, array in list(tensors.items()):
        wanted = signature.input(name).datatype.numpy
        cast = array.astype(wanted, copy=False) if wanted.kind == array.dtype.kind == "f" else array
        tensors[name] = cast[:rows] if cast.ndim else cast
    lengths = {len(array) for array in tensors.values() if array.ndim}
    if len(lengths) > 1:
        raise InvalidInput(f"{dataset.name}: the arrays have different numbers of rows")
    if 0 in lengths:
        raise InvalidInput(f"{dataset.name} has no rows")
    signature.validate(tensors)
    return tensors, dataset.name


def generated_inputs(signature: Signature, rows: int = GENERATED_ROWS, seed: int = 0) -> Tensors:
    """Seeded inputs that fit ``signature``: standard normal floats, integers in [0, 10),
    random booleans, short ASCII words; a dynamic first dimension holds ``rows`` rows.

    Raises:
        InvalidInput: an input of unknown rank (give a dataset instead).
    """
    rng = np.random.default_rng(seed)
    return {spec.name: _random(rng, spec, rows) for spec in signature.inputs}


def _random(rng: np.random.Generator, spec: TensorSpec, rows: int) -> npt.NDArray[Any]:
    if spec.shape is None:
        raise InvalidInput(
            f"input {spec.name!r} has no recorded shape, so no inputs can be generated for "
            "it; give a dataset (--dataset x.npz)"
        )
    shape = tuple(d if d >= 0 else rows if i == 0 else OTHER_DIM for i, d in enumerate(spec.shape))
    kind = spec.datatype.numpy.kind
    if spec.datatype is DataType.BYTES:
        letters = rng.integers(ord("a"), ord("z") + 1, size=(*shape, 5), dtype=np.uint8)
        words = [bytes(word) for word in letters.reshape(-1, 5)]
        return np.array(words, dtype=object).reshape(shape)
    if kind == "f":
        return rng.standard_normal(shape).astype(spec.datatype.numpy)
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.integers(0, 10, size=shape).astype(spec.datatype.numpy)
