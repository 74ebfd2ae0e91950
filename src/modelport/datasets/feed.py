"""A dataset split turned into a model's inputs: the seam optimize, tune and eval read data
through.

    feed = load_feed(registry, "digits@2:val", model.signature)
    model.predict(feed.batch(0, 32)), feed.labels
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modelport.registry import Registry
from modelport.types import Signature

__all__ = ["Feed", "load_feed"]


@dataclass(frozen=True, slots=True)
class Feed:
    """Rows of one dataset split, as a model takes them.

    ``inputs`` maps each of the model's input names to an array whose axis 0 is the row,
    already cast to the input's datatype and reshaped to its shape (digits' 64 pixels feed
    a ``[-1, 1, 8, 8]`` CNN). ``labels`` holds the label column (axis 0 the row), or
    ``None`` when the split has none.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    rows: int
    source: str
    """The split's reference as resolved, e.g. ``digits@2:val``."""

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of every input."""
        return {name: array[start:stop] for name, array in self.inputs.items()}


def load_feed(
    registry: Registry,
    ref: str,
    signature: Signature,
    *,
    input_map: Mapping[str, str] | None = None,
    label: str | None = None,
    limit: int | None = None,
) -> Feed:
    """Read ``ref`` (``name@version:split``, ``name@alias``, ``name``: the whole dataset)
    and match it to ``signature``'s inputs.

    Inputs match columns or tensors by name; a single-input model takes the feature matrix
    (every column but the label), reshaped to the input's shape when each row holds the
    same number of elements. ``input_map`` (model input -> column) and ``label`` override.
    ``limit`` keeps the first rows only.

    Raises:
        NotFound: no such dataset, version or split.
        InvalidInput: the data cannot feed this model (what is missing, which shapes).
    """
    raise NotImplementedError("the datasets helper implements this")
