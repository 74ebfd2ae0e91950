"""A measured candidate, and the tables and records made of it.

The stored version's metrics are ``Candidate.metrics()``: headline figures at the top
level (``speedup``, ``size_ratio``, ``agreement``, ...) and the whole report under
``optimization``, which ``modelport show`` prints as a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelport.optimization.gates import Verdict
from modelport.optimization.measure import Measurement, Side
from modelport.optimization.recipes import Recipe

__all__ = ["CANDIDATE_HEADERS", "Candidate", "candidate_rows", "report_rows"]

CANDIDATE_HEADERS = [
    "recipe", "size", "p50 ms", "speedup", "rows/s", "agreement", "metric", "int8 ops", "gates",
]  # fmt: skip


@dataclass(slots=True)
class Candidate:
    """One recipe's result: measured and judged, or why it could not be made."""

    recipe: Recipe
    measurement: Measurement | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    made: dict[str, Any] = field(default_factory=dict)
    """What applying the recipe recorded (excluded nodes, fusions, ...)."""
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and all(v.passed for v in self.verdicts)

    def failures(self) -> str:
        if self.error:
            return self.error
        return "; ".join(f"{v.gate} failed: {v.detail}" for v in self.verdicts if not v.passed)

    def metrics(self) -> dict[str, Any]:
        m = self.measurement
        if m is None:
            return {}
        headline: dict[str, Any] = {
            "recipe": self.recipe.label,
            "speedup": round(m.speedup, 4),
            "throughput_gain": round(m.throughput_gain, 4),
            "size_ratio": round(m.size_ratio, 4),
            "agreement": m.agreement.value,
        }
        if m.metric_name is not None:
            headline[m.metric_name] = m.candidate.metric
            headline[f"parent_{m.metric_name}"] = m.parent.metric
        return {**headline, "optimization": self.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        record: dict[str, Any] = {
            "recipe": self.recipe.label,
            "parameters": self.recipe.parameters(),
            "made": self.made,
            "passed": self.passed,
            "error": self.error or None,
            "gates": [
                {"gate": v.gate, "passed": v.passed, "detail": v.detail} for v in self.verdicts
            ],
        }
        if m is None:
            return record
        record.update(
            parent=_side(m.parent),
            candidate=_side(m.candidate),
            agreement={
                "value": m.agreement.value,
                "kind": m.agreement.kind,
                "max_abs": m.agreement.max_abs,
                "max_rel": m.agreement.max_rel,
                "cosine": m.agreement.cosine,
                "rows": m.agreement.rows,
            },
            metric=m.metric_name,
            speedup=m.speedup,
            throughput_gain=m.throughput_gain,
            size_ratio=m.size_ratio,
            rounds=m.rounds,
            threads=m.threads,
            rows_from=m.origin,
        )
        return record


def _side(side: Side) -> dict[str, Any]:
    speed = side.speed
    return {
        "size": side.size,
        "p50_ms": speed.p50_ms,
        "p50_iqr_ms": list(speed.p50_iqr),
        "throughput": speed.throughput,
        "throughput_iqr": list(speed.throughput_iqr),
        "batch": speed.batch,
        "metric": side.metric,
        "ops": side.ops,
        "int8_ops": side.int8_ops,
    }


def candidate_rows(candidates: Sequence[Candidate]) -> list[list[str]]:
    """One row per candidate under ``CANDIDATE_HEADERS``; the parent first."""
    rows: list[list[str]] = []
    first = next((c.measurement for c in candidates if c.measurement), None)
    if first is not None:
        rows.append(_row("parent", first.parent, None, "", "-"))
    for c in candidates:
        m = c.measurement
        if m is None:
            rows.append([c.recipe.label, *["-"] * 7, f"not made: {c.error}"])
            continue
        gates = (
            "PASS" if c.passed else "FAIL: " + ", ".join(v.gate for v in c.verdicts if not v.passed)
        )
        agreement = f"{m.agreement.value:.4f} {m.agreement.kind}"
        rows.append(_row(c.recipe.label, m.candidate, m, agreement, gates))
    return rows


def _row(label: str, side: Side, m: Measurement | None, agreement: str, gates: str) -> list[str]:
    metric = "-" if side.metric is None else f"{side.metric:.4f}"
    int8 = sum(side.int8_ops.values())
    total = sum(side.ops.values())
    return [
        label,
        _size(side.size),
        f"{side.speed.p50_ms:.3g} [{side.speed.p50_iqr[0]:.3g}-{side.speed.p50_iqr[1]:.3g}]",
        "1.00x" if m is None else f"{m.speedup:.2f}x",
        f"{side.speed.throughput:.4g} @{side.speed.batch}",
        agreement or "-",
        metric,
        f"{int8}/{total}",
        gates,
    ]


def report_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The stored ``optimization`` metrics as a parent-vs-version table (``modelport show``)."""
    headers = ["", "size", "p50 ms (IQR)", "rows/s", "metric", "kernels (int8)"]
    rows = []
    for key in ("parent", "candidate"):
        side = report.get(key) or {}
        iqr = side.get("p50_iqr_ms") or [0, 0]
        ops = side.get("ops") or {}
        metric = side.get("metric")
        rows.append(
            [
                "parent" if key == "parent" else "this version",
                _size(int(side.get("size", 0))),
                f"{side.get('p50_ms', 0):.3g} ({iqr[0]:.3g}-{iqr[1]:.3g})",
                f"{side.get('throughput', 0):.4g} @{side.get('batch', '-')}",
                "-" if metric is None else f"{metric:.4f}",
                f"{sum(ops.values())} ({sum((side.get('int8_ops') or {}).values())})",
            ]
        )
    return headers, rows


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
