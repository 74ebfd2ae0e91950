"""``modelport tune``: measure serving settings on the real server, store the best.

Objective: the most answers per second at the highest concurrency asked for, among the
points whose p99 latency stays within the budget at every concurrency (any p99 when no
budget is given) and that answered every request. The defaults are always measured; a
point must beat them by more than ``_NOISE`` to be chosen over them, so noise never moves a
version off the defaults for nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelport.datasets.feed import Feed, load_feed
from modelport.errors import InvalidInput
from modelport.registry import Registry
from modelport.tuning.grid import default_point, grid
from modelport.tuning.inputs import sample_requests
from modelport.tuning.load import LoadResult, drive
from modelport.tuning.server import serving

__all__ = ["TunePoint", "TuneResult", "tune"]

# Run-to-run spread of a short load point on a shared machine is a few percent.
_NOISE = 0.03
# Alternating re-measurements of a chosen point against the defaults before it is stored.
_CONFIRM_ROUNDS = 2
# A point this far below the defaults at the highest concurrency is not measured further.
_HOPELESS = 0.5


@dataclass(frozen=True, slots=True)
class TunePoint:
    """One point of the grid and what it measured, lowest concurrency first."""

    settings: dict[str, Any]
    results: tuple[LoadResult, ...]
    is_default: bool = False
    skipped: str = ""
    """Why the point was not measured at every concurrency ("" if it was)."""

    @property
    def throughput(self) -> float:
        """Answers/s at the highest concurrency (measured first); 0 if not measured."""
        return self.results[-1].throughput if self.results else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "default": self.is_default,
            "skipped": self.skipped,
            "results": [
                {
                    "concurrency": r.concurrency,
                    "throughput": round(r.throughput, 2),
                    "p50_ms": round(r.p50_ms, 3),
                    "p99_ms": round(r.p99_ms, 3),
                    "requests": r.requests,
                    "errors": r.errors,
                }
                for r in self.results
            ],
        }


@dataclass(frozen=True, slots=True)
class TuneResult:
    """Every point measured, the defaults, and the chosen point (None: none met the budget)."""

    ref: str
    concurrency: tuple[int, ...]
    latency_p99_ms: float | None
    points: tuple[TunePoint, ...]
    default: TunePoint
    chosen: TunePoint | None
    stored: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> TunePoint | None:
        """The qualifying point with the highest throughput (chosen may be the defaults)."""
        qualifying = [p for p in self.points if _qualifies(p, self.latency_p99_ms)]
        return max(qualifying, key=lambda p: p.throughput, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "concurrency": list(self.concurrency),
            "latency_p99_ms": self.latency_p99_ms,
            "chosen": self.chosen.settings if self.chosen else None,
            "stored": self.stored,
            "notes": list(self.notes),
            "default": self.default.to_dict(),
            "points": [p.to_dict() for p in self.points],
        }


def tune(
    ref: str,
    concurrency: Sequence[int] = (1, 8, 32),
    latency_p99_ms: float | None = None,
    duration: float = 5.0,
    registry: Registry | None = None,
    *,
    dataset: str | Feed | None = None,
    points: Sequence[dict[str, Any]] | None = None,
    store: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Measure serving settings for ``ref`` on a real server and store the best on it.

    Each point of the grid (``points``, default ``tuning.grid``; the defaults are always
    added) is served by its own ``modelport serve`` on 127.0.0.1 and loaded by closed-loop
    V2 REST clients at each ``concurrency`` for ``duration`` seconds. The chosen settings
    are stored on the version (``Registry.set_serving_settings``) unless ``store`` is false
    or no point met the budget; ``serve`` then uses them unless flags or its config file
    say otherwise.

    Args:
        dataset: rows to send: a dataset reference (``digits@2:val``) or a ``Feed``;
            default: random values the signature accepts.
        progress: called with one line per point measured.

    Raises:
        InvalidInput: a concurrency below 1, a non-positive duration or budget.
        NotFound: no such version (or dataset).
        Internal: a server for a point could not start.
    """
    levels = tuple(sorted(set(concurrency)))
    if not levels or levels[0] < 1:
        raise InvalidInput(f"concurrency must be 1 or more, not {list(concurrency)}")
    if duration <= 0:
        raise InvalidInput(f"duration must be positive, not {duration}")
    if latency_p99_ms is not None and latency_p99_ms <= 0:
        raise InvalidInput(f"the p99 latency budget must be positive, not {latency_p99_ms}")
    owned = registry is None
    reg = registry or Registry()
    try:
        record = reg.get(ref)
        feed = load_feed(reg, dataset, record.signature) if isinstance(dataset, str) else dataset
        requests = sample_requests(record.signature, feed)
        default = default_point()
        others = grid(record.signature) if points is None else points
        candidates = [default] + [p for p in others if p != default]
        plan = _Plan(reg, record.ref, record.model, requests, levels, duration, latency_p99_ms)
        measured: list[TunePoint] = []
        for settings in candidates:
            point = plan.measure(settings, measured[0] if measured else None)
            measured.append(point)
            if progress is not None:
                progress(_progress_line(point))
        result = plan.confirm(_choose(record.ref, levels, latency_p99_ms, measured))
        if store and result.chosen is not None:
            reg.set_serving_settings(record.ref, result.chosen.settings)
            return dataclasses.replace(result, stored=True)
        return result
    finally:
        if owned:
            reg.close()


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every point is measured on and against."""

    registry: Registry
    ref: str
    name: str
    requests: list[Any]
    levels: tuple[int, ...]
    duration: float
    budget: float | None

    def measure(self, settings: dict[str, Any], default: TunePoint | None) -> TunePoint:
        """Serve ``settings`` and load it at each level, the highest (the objective) first;
        stop at the first level it fails."""
        results: list[LoadResult] = []
        skipped = ""
        with serving(self.registry.settings, self.ref, self.name, settings) as url:
            for level in sorted(self.levels, reverse=True):
                result = drive(url, self.name, self.requests, level, self.duration)
                results.append(result)
                skipped = self._failure(result, default)
                if skipped:
                    break
        results.sort(key=lambda r: r.concurrency)
        return TunePoint(settings, tuple(results), is_default=default is None, skipped=skipped)

    def confirm(self, result: TuneResult) -> TuneResult:
        """Measure a chosen point that is not the defaults against them again, alternating,
        at the highest concurrency: one pass per point can be luck on a busy machine, and
        tune must never store settings slower than the defaults."""
        chosen, default = result.chosen, result.default
        if chosen is None or chosen is default or default.skipped:
            return result
        top = self.levels[-1]
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(_CONFIRM_ROUNDS):
            for is_chosen, point in ((False, default), (True, chosen)):
                with serving(self.registry.settings, self.ref, self.name, point.settings) as url:
                    rate = drive(url, self.name, self.requests, top, self.duration).throughput
                rates[is_chosen].append(rate)
        # Every round must agree: a median of two would let one lucky round decide.
        ratio = min(
            chosen_rate / max(default_rate, 1e-9)
            for chosen_rate, default_rate in zip(rates[True], rates[False], strict=True)
        )
        note = f"confirmed at c={top}: the chosen point served at least {ratio:.2f}x the defaults"
        if ratio > 1 + _NOISE:
            return dataclasses.replace(result, notes=[*result.notes, note])
        note += "; keeping the defaults"
        return dataclasses.replace(result, chosen=default, notes=[*result.notes, note])

    def _failure(self, result: LoadResult, default: TunePoint | None) -> str:
        level = result.concurrency
        if result.errors or not result.requests:
            return f"{result.errors} errors at c={level}"
        if self.budget is not None and result.p99_ms > self.budget:
            return f"p99 {result.p99_ms:.1f} ms > {self.budget:g} ms at c={level}"
        floor = _HOPELESS * default.throughput if default is not None else 0.0
        if level == self.levels[-1] and result.throughput < floor:
            return f"under {_HOPELESS:.0%} of the defaults at c={level}"
        return ""


def _qualifies(point: TunePoint, budget: float | None) -> bool:
    if point.skipped:
        return False
    return budget is None or all(r.p99_ms <= budget for r in point.results)


def _choose(
    ref: str, levels: tuple[int, ...], budget: float | None, points: list[TunePoint]
) -> TuneResult:
    default = points[0]
    result = TuneResult(ref, levels, budget, tuple(points), default, None)
    best = result.best
    if best is None:
        return result
    chosen = best
    if _qualifies(default, budget) and best.throughput <= default.throughput * (1 + _NOISE):
        chosen = default
    return TuneResult(ref, levels, budget, tuple(points), default, chosen)


def _progress_line(point: TunePoint) -> str:
    settings = " ".join(f"{key}={value}" for key, value in point.settings.items())
    measured = ", ".join(
        f"c={r.concurrency} {r.throughput:.0f}/s p99 {r.p99_ms:.1f} ms" for r in point.results
    )
    return f"{settings}: {measured}" + (f" (stopped: {point.skipped})" if point.skipped else "")
