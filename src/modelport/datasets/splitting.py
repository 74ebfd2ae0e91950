"""Drawing named splits: deterministic for a seed, stratified by a label when asked."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from modelport.errors import InvalidInput

__all__ = ["check_fractions", "draw_splits"]

TOLERANCE = 1e-9


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """The named fractions, without the zero ones; ``InvalidInput`` unless each lies in
    [0, 1] and they add up to 1 (within 1e-9)."""
    for name, fraction in fractions.items():
        if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
            raise InvalidInput(f"split {name!r} has fraction {fraction}; use a number from 0 to 1")
    total = sum(fractions.values())
    if abs(total - 1.0) > TOLERANCE:
        listed = " + ".join(f"{name} {fraction:g}" for name, fraction in fractions.items())
        raise InvalidInput(
            f"the split fractions must add up to 1, but {listed} = {total:.10g}; "
            "e.g. --train 0.8 --val 0.1 --test 0.1"
        )
    kept = {name: fraction for name, fraction in fractions.items() if fraction > 0}
    if not kept:
        raise InvalidInput("name at least one split with a fraction above 0")
    return kept


def draw_splits(
    rows: np.ndarray,
    fractions: Mapping[str, float],
    *,
    seed: int,
    strata: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Partition the row indices ``rows`` into the named splits (sorted index arrays).

    Sizes are the fractions of the row count rounded by largest remainder, so they always
    add up to every row. With ``strata`` (one label per row of ``rows``) each label's rows
    are divided in the same proportions, so every split keeps the label balance.
    """
    random = np.random.default_rng(seed)
    if strata is None:
        groups = [random.permutation(rows)]
    else:
        groups = [random.permutation(rows[strata == value]) for value in _unique(strata)]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in fractions}
    for group in groups:
        start = 0
        for name, size in zip(fractions, _sizes(len(group), fractions), strict=True):
            parts[name].append(group[start : start + size])
            start += size
    return {
        name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()
    }


def _unique(values: np.ndarray) -> list[object]:
    return sorted(set(values.tolist()), key=repr)


def _sizes(count: int, fractions: Mapping[str, float]) -> list[int]:
    exact = [count * fraction for fraction in fractions.values()]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes
