"""One model version in a server: its state, loaded model, batcher, cache and metric children."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from modelport.errors import Internal, InvalidInput, ModelportError
from modelport.registry import ModelVersion, Registry
from modelport.runtimes import CheckedModel, LoadOptions
from modelport.serving.batching import Batcher, BatchStats
from modelport.serving.config import ModelServeConfig
from modelport.serving.metrics import ServingMetrics
from modelport.serving.response_cache import ResponseCache
from modelport.types import DataType, Signature

__all__ = ["Deployment", "State"]

log = logging.getLogger(__name__)

# Loads run one at a time: the resident-memory difference around a load is then that
# model's own cost, and two big models never race for memory while warming up.
_LOAD_LOCK = threading.Lock()


class State(enum.StrEnum):
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


class Deployment:
    """A version of a served model. All methods run on the server's event loop."""

    def __init__(
        self,
        record: ModelVersion,
        config: ModelServeConfig,
        metrics: ServingMetrics,
        *,
        stored_settings: dict[str, Any] | None = None,
    ) -> None:
        self.record = record
        # The settings stored on the version (``modelport tune``) that ``config`` took up.
        self.stored_settings = dict(stored_settings or {})
        self.name = record.model
        self.version = record.version
        self.config = config
        self.state = State.UNAVAILABLE
        self.reason = ""
        self.model: CheckedModel | None = None
        self.batcher: Batcher | None = None
        self.response_cache = (
            ResponseCache(config.response_cache_size) if config.response_cache_size else None
        )
        self.memory = 0
        self.last_used = time.monotonic()
        self.in_flight = 0
        self._loading: asyncio.Future[None] | None = None
        labels = {"model": self.name, "version": str(self.version)}
        self.metrics = metrics
        self.cache_hits = metrics.response_cache.labels(result="hit", **labels)
        self.cache_misses = metrics.response_cache.labels(result="miss", **labels)
        self._queue_seconds = metrics.queue_seconds.labels(**labels)
        self._compute_seconds = metrics.compute_seconds.labels(**labels)
        self._batch_size = metrics.batch_size.labels(**labels)
        self._queue_depth = metrics.queue_depth.labels(**labels)
        self._request_children: dict[tuple[str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}

    @property
    def signature(self) -> Signature:
        return self.record.signature

    def settings_note(self) -> str:
        """One line on the stored settings this version is served with, "" if none: what
        ``serve`` prints at start-up so that nobody wonders where a setting came from."""
        stored = self.record.serving_settings
        if not stored:
            return ""
        used = _settings_text(self.stored_settings) or "none"
        note = f"{self.record.ref}: settings stored by modelport tune: {used}"
        overridden = sorted(set(stored) - set(self.stored_settings))
        if overridden:
            note += f" (overridden by flags or the config file: {', '.join(overridden)})"
        return note

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and (self.batcher is None or not self.batcher.busy)

    def count(self, protocol: str, outcome: str, seconds: float) -> None:
        """Record one finished request (label children cached: this is the hot path)."""
        key = (protocol, outcome)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.metrics.requests.labels(
                self.name, str(self.version), protocol, outcome
            )
        counter.inc()
        latency = self._latency_children.get(protocol)
        if latency is None:
            latency = self._latency_children[protocol] = self.metrics.request_seconds.labels(
                self.name, str(self.version), protocol
            )
        latency.observe(seconds)

    async def ensure_ready(self, registry: Registry) -> None:
        """Load and warm up (once, whoever asks first); everyone else waits for the same load."""
        if self.state is State.READY:
            return
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_future()
            self.state = State.LOADING
            try:
                await self._load(registry)
            except BaseException as exc:
                self.state = State.FAILED
                self.reason = str(exc)
                self._loading.set_exception(exc)
                self._loading.exception()  # retrieved: waiters re-raise it, none is orphaned
                self._loading = None
                raise
            self._loading.set_result(None)
            self._loading = None
            return
        await asyncio.shield(self._loading)

    async def _load(self, registry: Registry) -> None:
        started = time.monotonic()
        options = LoadOptions(
            intra_op_threads=self.config.thread_count(),
            solo_threads=self.config.solo_thread_count(),
        )
        model, memory = await asyncio.to_thread(
            _load_measured, registry, self.record.ref, options, self.config.warmup
        )
        self.model = model
        self.memory = memory
        self.batcher = Batcher(
            model,
            self.config,
            on_batch=self._on_batch,
            on_depth=self._queue_depth.set,
            prevalidated=True,  # ModelManager.infer validates every request
        )
        self.batcher.start()
        self.state = State.READY
        self.reason = ""
        self.last_used = time.monotonic()
        labels = {"model": self.name, "version": str(self.version)}
        self.metrics.load_seconds.labels(**labels).set(time.monotonic() - started)
        self.metrics.model_memory.labels(**labels).set(memory)
        log.info(
            "loaded %s in %.2fs (%.1f MiB)",
            self.record.ref,
            time.monotonic() - started,
            memory / 2**20,
        )

    def _on_batch(self, stats: BatchStats) -> None:
        self._batch_size.observe(stats.size)
        self._compute_seconds.observe(stats.compute_seconds)
        for waited in stats.queue_seconds:
            self._queue_seconds.observe(waited)

    async def unload(self, drain_seconds: float) -> None:
        """Finish requests already here, then free the model."""
        if self.state is not State.READY:
            self.state = State.UNAVAILABLE
            return
        self.state = State.UNLOADING
        deadline = time.monotonic() + drain_seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self.batcher is not None:
            await self.batcher.drain(max(0.0, deadline - time.monotonic()))
        if self.model is not None:
            self.model.close()
        self.model = None
        self.batcher = None
        self.state = State.UNAVAILABLE
        labels = {"model": self.name, "version": str(self.version)}
        self.metrics.model_memory.labels(**labels).set(0)
        self._queue_depth.set(0)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:  # noqa: PTH123 - hot, tiny, Linux only
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _load_measured(
    registry: Registry, ref: str, options: LoadOptions, warmup: bool
) -> tuple[CheckedModel, int]:
    with _LOAD_LOCK:
        before = _resident_bytes()
        model = registry.load(ref, options)
        if warmup:
            _warm_up(model, ref)
        return model, max(0, _resident_bytes() - before)


def _warm_up(model: CheckedModel, ref: str) -> None:
    """One inference on zeros, so the first real request does not pay for lazy set-up."""
    inputs = {spec.name: _zeros(spec.datatype, spec.shape) for spec in model.signature.inputs}
    try:
        model.predict(inputs)
    except (InvalidInput, Internal) as exc:
        # Zeros are not every model's idea of a valid input (nor one some models run on);
        # it loaded, so it can serve: each request then gets its own answer.
        log.warning("warm-up of %s skipped: %s", ref, exc)
    except ModelportError:
        raise


def _zeros(datatype: DataType, shape: tuple[int, ...] | None) -> np.ndarray[Any, Any]:
    dims = tuple(1 if d < 0 else d for d in (shape or (1,)))
    if datatype is DataType.BYTES:
        return np.full(dims, b"", dtype=object)
    return np.zeros(dims, dtype=datatype.numpy)


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())
