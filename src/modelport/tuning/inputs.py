"""Requests for tune's load: rows of a dataset, else random values the signature accepts."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelport.datasets.feed import Feed
from modelport.types import DataType, Signature, Tensors

__all__ = ["sample_requests"]

# Enough different requests that no cache or branch predictor sees one input only.
_SAMPLES = 16
# A variable dimension other than the batch (a sequence, an image side) gets this length.
_FREE_DIMENSION = 16


def sample_requests(signature: Signature, feed: Feed | None = None, seed: int = 0) -> list[Tensors]:
    """Single-row requests: the first rows of ``feed``, else random valid values.

    Random integers are small (0 or 1): they are safe as indices (token ids, categories),
    where larger values could be out of range.
    """
    if feed is not None and feed.rows:
        return [feed.batch(row, row + 1) for row in range(min(feed.rows, _SAMPLES))]
    rng = np.random.default_rng(seed)
    return [
        {spec.name: _random(rng, spec.datatype, spec.shape) for spec in signature.inputs}
        for _ in range(_SAMPLES)
    ]


def _random(
    rng: np.random.Generator, datatype: DataType, shape: tuple[int, ...] | None
) -> np.ndarray[Any, Any]:
    dims = tuple(
        1 if index == 0 and size < 0 else _FREE_DIMENSION if size < 0 else size
        for index, size in enumerate(shape or (1,))
    )
    if datatype is DataType.BYTES:
        return np.full(dims, b"modelport tune", dtype=object)
    if datatype is DataType.BOOL:
        return rng.integers(0, 2, dims).astype(bool)
    dtype = datatype.numpy
    if dtype.kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    return rng.integers(0, 2, dims).astype(dtype)
