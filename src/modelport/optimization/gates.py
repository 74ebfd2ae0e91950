"""The gates a candidate must pass to be stored, and how the best one is chosen.

Every gate reads the candidate's own measurement (``measure``): agreement with the parent
(``min_agreement``), the task metric's drop on labelled rows (``max_accuracy_drop``), and
never worse than the parent on the objective (latency at batch 1, throughput, or size).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.errors import InvalidInput
from modelport.optimization.measure import Measurement

__all__ = ["DEFAULT_MIN_AGREEMENT", "OBJECTIVES", "Gates", "Verdict", "judge", "score"]

DEFAULT_MIN_AGREEMENT = 0.99
OBJECTIVES = ("latency", "throughput", "size")


@dataclass(frozen=True, slots=True)
class Verdict:
    gate: str
    passed: bool
    detail: str
    """The measured figure against the limit, e.g. ``0.981 < 0.99 (short by 0.009)``."""


@dataclass(frozen=True, slots=True)
class Gates:
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_accuracy_drop: float | None = None
    objective: str = "latency"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidInput(
                f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}"
            )
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidInput(f"--min-agreement must be between 0 and 1, not {self.min_agreement}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise InvalidInput(
                f"--max-accuracy-drop must be between 0 and 1 (0.01 is one point), not "
                f"{self.max_accuracy_drop}"
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "min_agreement": self.min_agreement,
            "max_accuracy_drop": self.max_accuracy_drop,
            "objective": self.objective,
        }


def judge(gates: Gates, measured: Measurement) -> list[Verdict]:
    """Every gate's verdict on ``measured``."""
    agreement = measured.agreement
    verdicts = [
        Verdict(
            f"agreement ({agreement.kind})",
            agreement.value >= gates.min_agreement,
            _against(agreement.value, gates.min_agreement, at_least=True),
        )
    ]
    drop = measured.metric_drop
    if gates.max_accuracy_drop is not None:
        if drop is None:
            verdicts.append(Verdict("accuracy drop", False, "no task metric was measured"))
        else:
            verdicts.append(
                Verdict(
                    f"{measured.metric_name} drop",
                    drop <= gates.max_accuracy_drop + 1e-12,
                    _against(drop, gates.max_accuracy_drop, at_least=False),
                )
            )
    parent, candidate = measured.parent, measured.candidate
    if gates.objective == "latency":
        passed = candidate.speed.p50_ms <= parent.speed.p50_ms
        detail = (
            f"p50 {candidate.speed.p50_ms:.3g} ms vs parent {parent.speed.p50_ms:.3g} ms "
            f"({measured.speedup:.2f}x)"
        )
    elif gates.objective == "throughput":
        passed = candidate.speed.throughput >= parent.speed.throughput
        detail = (
            f"{candidate.speed.throughput:.4g} vs parent {parent.speed.throughput:.4g} rows/s "
            f"at batch {candidate.speed.batch} ({measured.throughput_gain:.2f}x)"
        )
    else:
        passed = candidate.size <= parent.size
        detail = (
            f"{candidate.size} vs parent {parent.size} bytes ({measured.size_ratio:.2f}x smaller)"
        )
    verdicts.append(Verdict(f"no worse {gates.objective}", passed, detail))
    return verdicts


def score(gates: Gates, measured: Measurement) -> float:
    """Higher is better on the objective: what ``--auto`` ranks passing candidates by."""
    if gates.objective == "latency":
        return measured.speedup
    if gates.objective == "throughput":
        return measured.throughput_gain
    return measured.size_ratio


def _against(value: float, limit: float, *, at_least: bool) -> str:
    if at_least:
        if value >= limit:
            return f"{value:.4g} >= {limit:g}"
        return f"{value:.4g} < {limit:g} (short by {limit - value:.3g})"
    if value <= limit + 1e-12:
        return f"{value:.4g} <= {limit:g}"
    return f"{value:.4g} > {limit:g} (over by {value - limit:.3g})"
