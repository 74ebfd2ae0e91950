"""A dataset version read into memory: its columns as numpy arrays, per split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modelport.datasets.records import DatasetVersion
from modelport.errors import InvalidInput, NotFound

__all__ = ["DatasetView"]


@dataclass(frozen=True, slots=True)
class DatasetView:
    """The rows of one split (or of the whole dataset when ``split`` is None).

    ``columns`` maps each column to an array whose axis 0 is the row (text columns are
    object arrays of ``str``). ``split_rows`` holds every split's row indices into the
    whole data, so ``view.split("val")`` needs no new read.
    """

    version: DatasetVersion
    split: str | None
    columns: dict[str, np.ndarray]
    whole: Mapping[str, np.ndarray]
    split_rows: Mapping[str, np.ndarray]

    @property
    def ref(self) -> str:
        return f"{self.version.ref}:{self.split}" if self.split else self.version.ref

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def label(self) -> np.ndarray | None:
        """The label column of the version (``None`` when it has none)."""
        name = self.version.label
        return self.columns[name] if name is not None else None

    def __getitem__(self, column: str) -> np.ndarray:
        try:
            return self.columns[column]
        except KeyError:
            raise InvalidInput(
                f"{self.ref} has no column {column!r}; its columns are {', '.join(self.columns)}"
            ) from None

    def features(self) -> np.ndarray:
        """Every column but the label, each row flattened and joined: ``[rows, elements]``."""
        parts = [
            array.reshape(len(array), -1)
            for name, array in self.columns.items()
            if name != self.version.label
        ]
        if not parts:
            raise InvalidInput(f"{self.ref} has no columns besides its label")
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def select(self, split: str | None) -> DatasetView:
        """The same version's rows of ``split`` (``None``: every row)."""
        if split is None:
            return DatasetView(self.version, None, dict(self.whole), self.whole, self.split_rows)
        if split not in self.split_rows:
            known = ", ".join(self.split_rows) or "none: split it with `modelport dataset split`"
            raise NotFound(
                f"dataset {self.version.ref} has no split {split!r}; its splits: {known}"
            )
        index = self.split_rows[split]
        return DatasetView(
            self.version,
            split,
            {name: array[index] for name, array in self.whole.items()},
            self.whole,
            self.split_rows,
        )
