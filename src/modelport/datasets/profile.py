"""Profiling a dataset while it streams past: its schema, row count and per-column
statistics (the reference a drift check compares against later).

Counts, missing values, min, max, mean and std are exact, over every row. Quantiles and
histograms come from a uniform reservoir sample of each column's values (exact while a
column holds at most ``RESERVOIR`` values; the profile says ``sampled`` when not), so memory
stays bounded whatever the size of the data. Category counts are exact for text, booleans
and integer columns with few distinct values.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from modelport.datasets.readers import Chunk
from modelport.datasets.records import ColumnSpec
from modelport.errors import InvalidInput
from modelport.types import DataType

__all__ = ["Profiler"]

RESERVOIR = 20_000
MAX_CATEGORIES = 1_000  # distinct text values counted before a column counts as free text
MAX_INT_CATEGORIES = 100  # an integer column with more distinct values is not a category
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
BINS = 10


class Profiler:
    """Feed it every chunk of a dataset (``add``), then read ``rows``, ``columns()`` and
    ``profile()``.

    Raises (from ``add``):
        InvalidInput: a column appears or disappears, changes its row shape, or mixes
            numbers and text.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.rows = 0
        self._columns: dict[str, _Column] = {}

    def add(self, chunk: Chunk) -> None:
        if not self._columns:
            self._columns = {name: _Column(name, self.source) for name in chunk}
        elif chunk.keys() != self._columns.keys():
            changed = sorted(set(chunk) ^ set(self._columns))
            raise InvalidInput(
                f"{self.source}: ragged rows: column(s) {', '.join(changed)} appear only after "
                f"row {self.rows}"
            )
        for name, values in chunk.items():
            self._columns[name].add(values, self.rows)
        self.rows += len(next(iter(chunk.values()))) if chunk else 0

    def columns(self) -> tuple[ColumnSpec, ...]:
        return tuple(column.spec() for column in self._columns.values())

    def profile(self) -> dict[str, Any]:
        return {name: column.summary(self.rows) for name, column in self._columns.items()}


class _Column:
    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.kind: str | None = None  # "number", "bool" or "text"
        self.dtype: np.dtype[Any] | None = None
        self.shape: tuple[int, ...] | None = None
        self.count = 0
        self.missing = 0
        self.minimum = np.inf
        self.maximum = -np.inf
        self.mean = 0.0
        self.m2 = 0.0
        self.seen = 0
        self.sample = np.empty(0, dtype=np.float64)
        self.categories: Counter[Any] | None = Counter()
        self.random = np.random.default_rng(0)

    def add(self, values: np.ndarray, row: int) -> None:
        kind = _kind(values)
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            raise InvalidInput(
                f"{self.source}: column {self.name!r} mixes types: {self.kind} up to row {row}, "
                f"then {kind}; make the column all numbers or all text"
            )
        shape = tuple(values.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise InvalidInput(
                f"{self.source}: ragged rows: column {self.name!r} holds {list(self.shape)} "
                f"values per row, then {list(shape)} after row {row}"
            )
        if kind == "number":
            self.dtype = (
                values.dtype if self.dtype is None else np.promote_types(self.dtype, values.dtype)
            )
            self._numbers(values.reshape(-1))
        else:
            self._text(values.reshape(-1))

    def _numbers(self, flat: np.ndarray) -> None:
        if flat.dtype.kind == "f":
            missing = np.isnan(flat)
            self.missing += int(missing.sum())
            flat = flat[~missing]
        if not len(flat):
            return
        as_float = flat.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore", over="ignore"):  # inf is a value: no finite mean
            count, mean = len(as_float), float(as_float.mean())
            m2 = float(((as_float - mean) ** 2).sum())
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total
        self.minimum = min(self.minimum, float(as_float.min()))
        self.maximum = max(self.maximum, float(as_float.max()))
        self._reservoir(as_float)
        if flat.dtype.kind in "iu" and self.categories is not None:
            unique, counts = np.unique(flat, return_counts=True)
            self.categories.update(dict(zip(unique.tolist(), counts.tolist(), strict=True)))
            if len(self.categories) > MAX_INT_CATEGORIES:
                self.categories = None
        elif flat.dtype.kind == "f":
            self.categories = None

    def _reservoir(self, values: np.ndarray) -> None:
        room = RESERVOIR - len(self.sample)
        if room > 0:
            head, values = values[:room], values[room:]
            self.sample = np.concatenate([self.sample, head])
            self.seen += len(head)
        if len(values):
            # Algorithm R, vectorised: value t (0-based, over the whole column) replaces a
            # random slot with probability RESERVOIR / (t + 1).
            positions = np.arange(self.seen, self.seen + len(values)) + 1
            slots = (self.random.random(len(values)) * positions).astype(np.int64)
            keep = slots < RESERVOIR
            self.sample[slots[keep]] = values[keep]
            self.seen += len(values)

    def _text(self, flat: np.ndarray) -> None:
        if flat.dtype.kind == "S":
            flat = np.char.decode(flat, "utf-8", "replace")
        # ``!= None`` is elementwise on an object array: one C loop, not a Python one.
        present = flat[flat != None] if flat.dtype == object else flat  # noqa: E711
        self.missing += len(flat) - len(present)
        self.count += len(present)
        if self.categories is not None:
            self.categories.update(present.tolist())
            if len(self.categories) > MAX_CATEGORIES:
                self.categories = None

    def spec(self) -> ColumnSpec:
        if self.kind == "text":
            datatype = DataType.BYTES
        elif self.kind == "bool":
            datatype = DataType.BOOL
        else:
            dtype = self.dtype if self.dtype is not None else np.dtype(np.float64)
            if dtype.kind in "iu" and self.missing:
                dtype = np.dtype(np.float64)
            datatype = DataType.from_numpy(dtype)
        return ColumnSpec(self.name, datatype, self.shape or ())

    def summary(self, rows: int) -> dict[str, Any]:
        summary: dict[str, Any] = _finite(self._summary(rows))
        return summary

    def _summary(self, rows: int) -> dict[str, Any]:
        values = rows * _elements(self.shape)
        out: dict[str, Any] = {
            "count": self.count,
            "missing_rate": self.missing / values if values else 0.0,
        }
        if self.kind == "number" and self.count:
            with np.errstate(invalid="ignore"):
                quantiles = np.quantile(self.sample, QUANTILES)
            out.update(
                min=self.minimum,
                max=self.maximum,
                mean=self.mean,
                std=float(np.sqrt(self.m2 / self.count)) if np.isfinite(self.m2) else None,
                quantiles={str(q): float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
                histogram=self._histogram(),
                sampled=self.count > RESERVOIR,
            )
        if self.categories and (self.kind != "number" or self.count):
            top = self.categories.most_common(50)
            out["categories"] = {str(k): int(v) for k, v in top}
            out["distinct"] = len(self.categories)
        elif self.kind == "text" and self.categories is None:
            out["distinct"] = f"more than {MAX_CATEGORIES}"
        return out

    def _histogram(self) -> dict[str, list[float]]:
        finite = self.sample[np.isfinite(self.sample)]
        if not len(finite):
            return {"edges": [], "counts": []}
        counts, edges = np.histogram(finite, bins=BINS)
        scale = self.count / len(self.sample)
        return {
            "edges": [float(e) for e in edges],
            "counts": [round(float(c) * scale) for c in counts],
        }


def _kind(values: np.ndarray) -> str:
    if values.dtype.kind == "b":
        return "bool"
    if values.dtype.kind in "iuf":
        return "number"
    # Object arrays come from pyarrow (npz refuses pickled objects): text, or booleans
    # with missing values.
    first = next((v for v in values.reshape(-1)[:1000].tolist() if v is not None), None)
    return "bool" if isinstance(first, bool) else "text"


def _finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float as ``None``: JSON has no such numbers
    (PostgreSQL refuses them), and a column holding ``inf`` has no finite mean."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _elements(shape: tuple[int, ...] | None) -> int:
    count = 1
    for dim in shape or ():
        count *= dim
    return count
