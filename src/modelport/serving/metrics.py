"""Prometheus metrics of one server, in a registry of its own (nothing registered at import)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["ServingMetrics"]

_LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    """Every series ``/metrics`` exposes. Label children are cached by callers on hot paths."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.requests = Counter(
            "modelport_requests", "Inference requests by model, version, protocol and outcome.",
            ["model", "version", "protocol", "outcome"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "modelport_request_duration_seconds", "Inference request latency inside the server.",
            ["model", "version", "protocol"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "modelport_queue_duration_seconds", "Time a request waited for a batch slot.",
            ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "modelport_compute_duration_seconds", "Time the runtime spent on one batch.",
            ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "modelport_batch_size", "Requests merged into one runtime call.",
            ["model", "version"], buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "modelport_queue_depth", "Requests waiting for a batch slot.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.cache = Counter(
            "modelport_cache", "Response cache look-ups by result (hit or miss).",
            ["model", "version", "result"], registry=r,
        )  # fmt: skip
        self.load_seconds = Gauge(
            "modelport_model_load_seconds", "How long the last load (with warm-up) took.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.model_memory = Gauge(
            "modelport_model_memory_bytes", "Resident memory a loaded model added to the process.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.models_loaded = Gauge(
            "modelport_models_loaded", "Model versions loaded and ready.", registry=r
        )
        self.unloads = Counter(
            "modelport_model_unloads", "Model versions unloaded, by reason.", ["reason"], registry=r
        )
        self.in_flight = Gauge(
            "modelport_requests_in_flight", "Inference requests being handled.", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
