"""A dataset split turned into a model's inputs: the seam optimize, tune and eval read data
through.

    feed = load_feed(registry, "digits@2:val", model.signature)
    model.predict(feed.batch(0, 32)), feed.labels
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from modelport.errors import InvalidInput
from modelport.registry import Registry
from modelport.types import DataType, Signature, TensorSpec

__all__ = ["Feed", "load_feed", "parse_input_map"]


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
    view = registry.datasets.load(ref)
    columns = view.columns
    label_name = label if label is not None else view.version.label
    if label_name is not None and label_name not in columns:
        raise InvalidInput(
            f"{view.ref} has no label column {label_name!r}; its columns are {', '.join(columns)}"
        )
    if limit is not None:
        columns = {name: array[:limit] for name, array in columns.items()}
    mapping = dict(input_map or {})
    for input_name, mapped in mapping.items():
        signature.input(input_name)  # InvalidInput naming the model's inputs
        if mapped not in columns:
            raise InvalidInput(
                f"--input-map {input_name}={mapped}: {view.ref} has no column {mapped!r}; its "
                f"columns are {', '.join(columns)}"
            )
    inputs: dict[str, np.ndarray] = {}
    unmatched: list[TensorSpec] = []
    for spec in signature.inputs:
        column: str | None = mapping.get(spec.name)
        if column is None and spec.name in columns:
            column = spec.name
        if column is None:
            unmatched.append(spec)
        else:
            inputs[spec.name] = _conform(spec, columns[column], f"column {column!r}", view.ref)
    if unmatched and len(signature.inputs) == 1:
        (spec,) = unmatched
        features = [name for name in columns if name != label_name]
        inputs[spec.name] = _conform(
            spec, _features(columns, features, view.ref), f"the features ({_listed(features)})",
            view.ref,
        )  # fmt: skip
    elif unmatched:
        raise InvalidInput(
            f"model input(s) {', '.join(s.name for s in unmatched)} match no column of "
            f"{view.ref} (its columns: {', '.join(columns)}); map them with --input-map "
            "INPUT=COLUMN"
        )
    rows = len(next(iter(columns.values()))) if columns else 0
    labels = columns[label_name] if label_name is not None else None
    return Feed(inputs=inputs, labels=labels, rows=rows, source=view.ref)


def parse_input_map(items: Iterable[str]) -> dict[str, str]:
    """``["x=pixels", "mask=attention"]`` (``--input-map`` values) as ``{input: column}``.

    Raises:
        InvalidInput: an item is not ``INPUT=COLUMN``.
    """
    mapping = {}
    for item in items:
        name, sep, column = item.partition("=")
        if not (sep and name and column):
            raise InvalidInput(
                f"--input-map {item!r} must look like INPUT=COLUMN, e.g. --input-map x=pixels"
            )
        mapping[name] = column
    return mapping


def _features(columns: Mapping[str, np.ndarray], names: list[str], ref: str) -> np.ndarray:
    """The feature matrix: each column's row flattened, joined in column order."""
    if not names:
        raise InvalidInput(f"{ref} has no columns besides its label to feed the model")
    if len(names) == 1:
        return columns[names[0]]
    texts = [n for n in names if columns[n].dtype == object]
    if texts:
        raise InvalidInput(
            f"{ref}: text column(s) {', '.join(texts)} cannot join the numeric features of a "
            "single-input model; pick the columns with --input-map INPUT=COLUMN"
        )
    return np.concatenate([columns[n].reshape(len(columns[n]), -1) for n in names], axis=1)


def _conform(spec: TensorSpec, values: np.ndarray, what: str, ref: str) -> np.ndarray:
    """``values`` (axis 0 the row) reshaped to ``spec``'s shape and cast to its datatype."""
    rows, per_row = len(values), int(np.prod(values.shape[1:], dtype=np.int64))
    if spec.shape is not None and len(spec.shape) >= 1:
        target = spec.shape[1:]
        fixed = int(np.prod([d for d in target if d >= 0], dtype=np.int64))
        dynamic = sum(d < 0 for d in target)
        if (dynamic == 0 and fixed != per_row) or (dynamic and per_row % max(fixed, 1)):
            raise InvalidInput(
                f"model input {spec.name!r} takes {fixed} value(s) per row "
                f"({spec.shape_text()}), but {what} of {ref} hold {per_row}; map another "
                "column with --input-map INPUT=COLUMN"
            )
        if dynamic <= 1:
            shape = [per_row // max(fixed, 1) if d < 0 else d for d in target]
            values = values.reshape(rows, *shape)
        elif values.ndim != len(spec.shape):
            raise InvalidInput(
                f"model input {spec.name!r} ({spec.shape_text()}) has {dynamic} dynamic "
                f"dimensions; {what} of {ref} do not say how to shape {per_row} values per row"
            )
    return _cast(spec, values, what, ref)


def _cast(spec: TensorSpec, values: np.ndarray, what: str, ref: str) -> np.ndarray:
    text = values.dtype == object or values.dtype.kind in "US"
    if spec.datatype is DataType.BYTES:
        if not text:
            raise InvalidInput(
                f"model input {spec.name!r} takes text (BYTES), but {what} of {ref} are numbers"
            )
        encoded = [v.encode() if isinstance(v, str) else v for v in values.reshape(-1).tolist()]
        out = np.empty(len(encoded), dtype=object)
        out[:] = encoded
        return out.reshape(values.shape)
    if text:
        raise InvalidInput(
            f"model input {spec.name!r} takes {spec.datatype.value}, but {what} of {ref} are text"
        )
    return values.astype(spec.datatype.numpy, copy=False)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", … {len(names)} in all" if len(names) > 5 else "")
