"""Measure a candidate against its parent, on this machine, before anything is stored.

    measurement = measure(parent_graph, candidate_graph, work, threads=1, budget_seconds=5)
    measurement.candidate.p50_ms, measurement.agreement.value

Both graphs run in this process with the same session options and intra-op threads, in
interleaved rounds (parent, candidate, then candidate, parent, ...) so that whatever else
the machine does falls on both alike; every figure is a median with its interquartile
range. Agreement and the task metric come from the same rows for both. The operators are
those onnxruntime actually ran after its own fusions, read from its profiler.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.optimization.progress import progress_bar
from modelport.optimization.workload import Workload

__all__ = ["Agreement", "Measurement", "Side", "Speed", "measure", "session"]

REPEATS = 5
"""Batch-1 calls per model per round."""
MIN_ROUNDS = 3
MAX_ROUNDS = 200
AGREEMENT_CHUNK = 64
_INT8_OPS = re.compile(
    r"^(QLinear\w+|\w+Integer(ToFloat)?|DynamicQuantize\w+|QGemm|QAttention|QOrdered\w+)$"
)
"""Kernels that compute in int8 (QuantizeLinear/DequantizeLinear only convert)."""
_EMBEDDING_NAMES = re.compile(r"embed|hidden|pool|sentence|feature", re.IGNORECASE)
_REGRESSION = (1e-2, 1e-2)
"""A regression output agrees on a row within 1e-2 absolute + 1e-2 relative."""


@dataclass(frozen=True, slots=True)
class Speed:
    p50_ms: float
    """Median latency of one call at batch 1."""
    p50_iqr: tuple[float, float]
    throughput: float
    """Median rows per second at ``batch``."""
    throughput_iqr: tuple[float, float]
    batch: int


@dataclass(frozen=True, slots=True)
class Side:
    """One model's figures."""

    size: int
    speed: Speed
    metric: float | None
    ops: dict[str, int] = field(default_factory=dict)
    """Kernels run for one batch-1 call, by operator type, after onnxruntime's fusions."""

    @property
    def int8_ops(self) -> dict[str, int]:
        return {op: n for op, n in self.ops.items() if _INT8_OPS.match(op)}


@dataclass(frozen=True, slots=True)
class Agreement:
    """How closely the candidate's outputs follow the parent's, on the same rows."""

    value: float
    """The figure ``--min-agreement`` gates: top-1 or label agreement for classifiers,
    mean cosine for embeddings, the share of rows within tolerance for other floats."""
    kind: str
    """``top-1``, ``label``, ``cosine`` or ``within 1e-2``."""
    max_abs: float | None
    max_rel: float | None
    cosine: float | None
    rows: int


@dataclass(frozen=True, slots=True)
class Measurement:
    parent: Side
    candidate: Side
    agreement: Agreement
    metric_name: str | None
    """``accuracy`` or ``r2`` when the rows have labels."""
    rounds: int
    threads: int
    origin: str
    """Where the rows came from (a dataset split or ``generated``)."""

    @property
    def speedup(self) -> float:
        """Parent's p50 over the candidate's: above 1 is faster."""
        return self.parent.speed.p50_ms / self.candidate.speed.p50_ms

    @property
    def throughput_gain(self) -> float:
        return self.candidate.speed.throughput / self.parent.speed.throughput

    @property
    def size_ratio(self) -> float:
        """Parent's size over the candidate's: above 1 is smaller."""
        return self.parent.size / max(self.candidate.size, 1)

    @property
    def metric_drop(self) -> float | None:
        if self.parent.metric is None or self.candidate.metric is None:
            return None
        return self.parent.metric - self.candidate.metric


def session(graph: Path, threads: int, *, profile_in: Path | None = None) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (and one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_in is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_in / "profile")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def measure(
    parent: tuple[Path, int],
    candidate: tuple[Path, int],
    work: Workload,
    *,
    threads: int,
    budget_seconds: float,
    scratch: Path,
    label: str = "candidate",
    show_progress: bool = True,
) -> Measurement:
    """Measure ``candidate`` against ``parent``, each given as (graph file, bytes stored).
    ``budget_seconds`` bounds the timed rounds (at least ``MIN_ROUNDS`` run); ``scratch``
    holds the profiler's files."""
    sessions = [session(graph, threads) for graph, _ in (parent, candidate)]
    outputs = [_run_all(s, work) for s in sessions]
    agreement = _agreement(outputs[0], outputs[1], work)
    metric_name, metrics = _metrics(outputs, work)
    speeds, rounds = _speed(sessions, work, budget_seconds, label, show_progress)
    sides = [
        Side(size, speed, metric, _executed_ops(graph, work, threads, scratch))
        for (graph, size), speed, metric in zip((parent, candidate), speeds, metrics, strict=True)
    ]
    return Measurement(sides[0], sides[1], agreement, metric_name, rounds, threads, work.origin)


def _run_all(model: Any, work: Workload) -> dict[str, np.ndarray]:
    names = [o.name for o in model.get_outputs()]
    chunk = min(work.batch, AGREEMENT_CHUNK)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, work.rows, chunk):
        rows = {k: np.ascontiguousarray(v[start : start + chunk]) for k, v in work.inputs.items()}
        if work.fixed and len(next(iter(rows.values()))) < chunk:
            rows = {k: np.resize(v, (chunk, *v.shape[1:])) for k, v in rows.items()}
        for name, value in zip(names, model.run(names, rows), strict=True):
            if isinstance(value, np.ndarray):  # sequences of maps (ZipMap) are not compared
                parts[name].append(value)
    return {name: np.concatenate(p)[: work.rows] for name, p in parts.items() if p}


def _agreement(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], work: Workload
) -> Agreement:
    gated: dict[str, list[float]] = {"label": [], "top-1": [], "cosine": [], "within 1e-2": []}
    max_abs: float | None = None
    max_rel: float | None = None
    cosines: list[float] = []
    for name, want in expected.items():
        got = actual[name]
        if want.dtype.kind not in "f":
            gated["label"].append(float(np.mean(_rows(want) == _rows(got))))
            continue
        want64, got64 = want.astype(np.float64), got.astype(np.float64)
        diff = np.abs(want64 - got64)
        max_abs = max(max_abs or 0.0, float(diff.max(initial=0.0)))
        big = np.abs(want64) > 1e-3
        if big.any():
            max_rel = max(max_rel or 0.0, float((diff[big] / np.abs(want64[big])).max()))
        flat_want, flat_got = want64.reshape(len(want64), -1), got64.reshape(len(got64), -1)
        if flat_want.shape[1] > 1:
            cosine = _cosine(flat_want, flat_got)
            cosines.append(cosine)
        if _is_classifier(name, want, work):
            gated["top-1"].append(float(np.mean(want.argmax(axis=1) == got.argmax(axis=1))))
        elif flat_want.shape[1] > 1:
            gated["cosine"].append(cosine)
        else:
            absolute, relative = _REGRESSION
            close = np.abs(flat_want - flat_got) <= absolute + relative * np.abs(flat_want)
            gated["within 1e-2"].append(float(np.mean(close.all(axis=1))))
    kind = next((k for k in ("label", "top-1", "cosine", "within 1e-2") if gated[k]), "label")
    if kind in ("label", "top-1") and gated["top-1"] and gated["label"]:
        value, kind = min(gated["label"] + gated["top-1"]), "top-1"
    else:
        value = min(gated[kind], default=1.0)
    cosine_mean = min(cosines) if cosines else None
    return Agreement(value, kind, max_abs, max_rel, cosine_mean, work.rows)


def _is_classifier(name: str, output: np.ndarray, work: Workload) -> bool:
    return (
        output.ndim == 2
        and output.shape[1] > 1
        and not work.embedding
        and not _EMBEDDING_NAMES.search(name)
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = norms == 0
    cos = np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))
    return float(np.mean(cos))


def _rows(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(len(array), -1)
    return np.asarray([tuple(row) for row in flat.tolist()], dtype=object)


def _metrics(
    outputs: list[dict[str, np.ndarray]], work: Workload
) -> tuple[str | None, list[float | None]]:
    labels = work.labels
    if labels is None or not outputs[0]:
        return None, [None, None]
    labels = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels
    if labels.dtype.kind == "f":
        return "r2", [_r2(labels, _regression_output(o)) for o in outputs]
    return "accuracy", [_accuracy(labels, o, work) for o in outputs]


def _accuracy(labels: np.ndarray, outputs: dict[str, np.ndarray], work: Workload) -> float | None:
    for _name, value in outputs.items():
        if value.dtype.kind != "f" and value.size == len(labels):
            predicted = value.reshape(-1)
            break
    else:
        scores = [(n, v) for n, v in outputs.items() if _is_classifier(n, v, work)]
        if not scores:
            return None
        predicted = scores[0][1].argmax(axis=1)
    same_kind = predicted.dtype.kind in "iub" and labels.dtype.kind in "iub"
    wanted = labels if same_kind else labels.astype(str)
    got = predicted if same_kind else predicted.astype(str)
    return float(np.mean(wanted == got))


def _regression_output(outputs: dict[str, np.ndarray]) -> np.ndarray:
    value = next(v for v in outputs.values() if v.dtype.kind == "f")
    return value.reshape(len(value), -1)[:, 0]


def _r2(labels: np.ndarray, predicted: np.ndarray) -> float:
    labels = labels.astype(np.float64)
    total = float(np.sum((labels - labels.mean()) ** 2)) or 1.0
    return 1.0 - float(np.sum((labels - predicted) ** 2)) / total


def _speed(
    sessions: list[Any], work: Workload, budget: float, label: str, show_progress: bool
) -> tuple[list[Speed], int]:
    single, batched = work.take(work.batch if work.fixed else 1), work.take(work.batch)
    latencies: list[list[float]] = [[], []]
    rates: list[list[float]] = [[], []]
    for model in sessions:  # warm up: first calls allocate and pick kernels
        model.run(None, single)
        model.run(None, batched)
    deadline = time.monotonic() + budget
    rounds = 0
    with progress_bar(f"measuring {label}", budget, enabled=show_progress) as advance:
        started = time.monotonic()
        while rounds < MIN_ROUNDS or (time.monotonic() < deadline and rounds < MAX_ROUNDS):
            order = (0, 1) if rounds % 2 == 0 else (1, 0)
            for index in order:
                model = sessions[index]
                for _ in range(REPEATS):
                    start = time.perf_counter()
                    model.run(None, single)
                    latencies[index].append(time.perf_counter() - start)
                start = time.perf_counter()
                model.run(None, batched)
                rates[index].append(work.batch / (time.perf_counter() - start))
            rounds += 1
            now = time.monotonic()
            advance(now - started)
            started = now
    speeds = [
        Speed(
            float(np.median(lat)) * 1e3,
            _iqr(np.asarray(lat) * 1e3),
            float(np.median(rate)),
            _iqr(np.asarray(rate)),
            work.batch,
        )
        for lat, rate in zip(latencies, rates, strict=True)
    ]
    return speeds, rounds


def _iqr(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [25, 75])
    return float(low), float(high)


def _executed_ops(graph: Path, work: Workload, threads: int, scratch: Path) -> dict[str, int]:
    scratch.mkdir(parents=True, exist_ok=True)
    profiled = session(graph, threads, profile_in=scratch)
    profiled.run(None, work.take(work.batch if work.fixed else 1))
    path = Path(profiled.end_profiling())
    try:
        events = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for event in events:
        op = event.get("args", {}).get("op_name")
        if event.get("cat") == "Node" and op and event.get("name", "").endswith("_kernel_time"):
            counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))
