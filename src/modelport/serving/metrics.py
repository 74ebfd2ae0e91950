"""Prometheus metrics of one server, in a registry of its own (nothing registered at import).

With several worker processes (``serve --workers N``) each keeps its own series; the worker
that answers ``/metrics`` merges the others' snapshots into its own: counters and histograms
add up, gauges add up or take the largest (``Family.merge``), and each worker's memory is
reported under its own ``worker`` label.

The hot path records into plain Python counters and bucket lists — no locks: every
observation happens on the server's event loop — and prometheus-client renders them at
scrape time through a custom collector. prometheus-client's own Histogram takes a lock and
costs about 6 µs per observation; four of them per request were a tenth of a tiny model's
whole request cost.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["ServingMetrics"]

LATENCY_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Value:
    """A counter or gauge value (event loop only)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Buckets:
    """A histogram's counts per bucket and sum (event loop only)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class Family:
    """One metric name with its label children."""

    def __init__(
        self,
        kind: str,
        name: str,
        doc: str,
        labels: Sequence[str],
        *,
        bounds: Sequence[float] = (),
        merge: str = "sum",
    ) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.label_names = tuple(labels)
        self.bounds = bounds
        self.merge = merge
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str, **named: str) -> Any:
        key = values or tuple(named[n] for n in self.label_names)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = (
                Buckets(self.bounds) if self.kind == "histogram" else Value()
            )
        return child

    def snapshot(self) -> list[list[Any]]:
        """The children as plain data, for another worker to merge: [labels, value]."""
        if self.kind == "histogram":
            return [[list(k), [c.counts, c.total]] for k, c in self.children.items()]
        return [[list(k), c.value] for k, c in self.children.items()]

    def metric(self, others: Sequence[list[list[Any]]] = ()) -> Metric:
        """This family for exposition, merged with other workers' snapshots of it."""
        values: dict[tuple[str, ...], Any] = {
            key: [list(c.counts), c.total] if self.kind == "histogram" else c.value
            for key, c in self.children.items()
        }
        for snapshot in others:
            for labels, value in snapshot:
                key = tuple(labels)
                if key not in values:
                    values[key] = value
                elif self.kind == "histogram":
                    mine = values[key]
                    mine[0] = [a + b for a, b in zip(mine[0], value[0], strict=True)]
                    mine[1] += value[1]
                elif self.merge == "max":
                    values[key] = max(values[key], value)
                else:
                    values[key] += value
        if self.kind == "histogram":
            family = HistogramMetricFamily(self.name, self.doc, labels=self.label_names)
            for key, (counts, total) in values.items():
                cumulative, buckets = 0, []
                for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                    cumulative += count
                    buckets.append((_bound_text(bound), cumulative))
                family.add_metric(list(key), buckets, total)
            return family
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        metric = cls(self.name, self.doc, labels=self.label_names)
        for key, value in values.items():
            metric.add_metric(list(key), value)
        return metric


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class ServingMetrics(Collector):
    """Every series ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.families: list[Family] = []

        def add(kind: str, name: str, doc: str, labels: Sequence[str], **options: Any) -> Family:
            family = Family(kind, name, doc, labels, **options)
            self.families.append(family)
            return family

        self.requests = add(
            "counter",
            "modelport_requests",
            "Inference requests by model, version, protocol and outcome.",
            ["model", "version", "protocol", "outcome"],
        )
        self.request_seconds = add(
            "histogram",
            "modelport_request_duration_seconds",
            "Inference request latency inside the server.",
            ["model", "version", "protocol"],
            bounds=LATENCY_BUCKETS,
        )
        self.queue_seconds = add(
            "histogram",
            "modelport_queue_duration_seconds",
            "Time a request waited for a batch slot.",
            ["model", "version"],
            bounds=LATENCY_BUCKETS,
        )
        self.compute_seconds = add(
            "histogram",
            "modelport_compute_duration_seconds",
            "Time the runtime spent on one batch.",
            ["model", "version"],
            bounds=LATENCY_BUCKETS,
        )
        self.batch_size = add(
            "histogram",
            "modelport_batch_size",
            "Requests merged into one runtime call.",
            ["model", "version"],
            bounds=BATCH_BUCKETS,
        )
        self.queue_depth = add(
            "gauge",
            "modelport_queue_depth",
            "Requests waiting for a batch slot.",
            ["model", "version"],
        )
        self.response_cache = add(
            "counter",
            "modelport_cache",
            "Response cache look-ups by result (hit or miss).",
            ["model", "version", "result"],
        )
        self.load_seconds = add(
            "gauge",
            "modelport_model_load_seconds",
            "How long the last load (with warm-up) took.",
            ["model", "version"],
            merge="max",
        )
        self.model_memory = add(
            "gauge",
            "modelport_model_memory_bytes",
            "Resident memory a loaded model added to its process, summed over workers.",
            ["model", "version"],
        )
        self.unloads = add(
            "counter", "modelport_model_unloads", "Model versions unloaded, by reason.", ["reason"]
        )
        self.models_loaded = add(
            "gauge", "modelport_models_loaded", "Model versions loaded and ready.", [], merge="max"
        ).labels()
        self.in_flight = add(
            "gauge", "modelport_requests_in_flight", "Inference requests being handled.", []
        ).labels()
        self.client_disconnects = add(
            "counter",
            "modelport_client_disconnects",
            "Requests whose client went away before the server had read them, by protocol.",
            ["protocol"],
        )
        self.http_refused = add(
            "counter",
            "modelport_http_refused",
            "HTTP requests the connection layer refused or cut off, by reason: head_timeout "
            "and body_timeout (408), headers_too_large (431), too_many_connections (503), "
            "malformed (400).",
            ["reason"],
        )
        self.worker_memory = add(
            "gauge",
            "modelport_worker_memory_bytes",
            "Memory of each server worker process: rss (resident), pss (resident with pages "
            "shared between workers, such as mmapped model weights, divided among them).",
            ["worker", "kind"],
        )
        self.worker = "0"
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(self)
        self._others: Sequence[dict[str, list[list[Any]]]] = ()

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """Every family as plain data (JSON-safe), for the worker that answers ``/metrics``."""
        self._measure_memory()
        return {family.name: family.snapshot() for family in self.families}

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric([other.get(family.name, []) for other in self._others])

    def exposition(self, others: Sequence[dict[str, list[list[Any]]]] = ()) -> bytes:
        """The text format; ``others`` are other workers' ``snapshot()`` to merge in."""
        self._measure_memory()
        self._others = others
        try:
            return generate_latest(self.registry)
        finally:
            self._others = ()

    def _measure_memory(self) -> None:
        for kind, value in _process_memory().items():
            self.worker_memory.labels(self.worker, kind).set(value)


def _process_memory() -> dict[str, float]:
    """This process's RSS and PSS in bytes, from /proc (Linux); empty where unreadable."""
    try:
        text = Path(f"/proc/{os.getpid()}/smaps_rollup").read_text(encoding="ascii")
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    except OSError:
        return {}
    return {
        kind: float(fields[key].split()[0]) * 1024
        for kind, key in (("rss", "Rss"), ("pss", "Pss"))
        if key in fields
    }
