"""Dynamic batching: concurrent requests for one model version are merged, run once, split.

An idle instance takes the oldest request at once — a window that always waits costs
latency at low load for nothing. While every instance is busy, requests queue, and the next
free instance takes all that fit (same trailing shapes, up to ``max_batch_size`` rows). A
positive ``max_queue_delay_ms`` lets a batch wait that long to grow.

The queue is bounded: a full queue refuses at once (``Unavailable``, i.e. 503/RESOURCE_EXHAUSTED)
so that overload shows up as fast errors, not ever-growing latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelport.errors import (
    Internal,
    InvalidInput,
    ModelportError,
    Overloaded,
    Timeout,
    Unavailable,
)
from modelport.runtimes import CheckedModel
from modelport.serving.config import ModelServeConfig
from modelport.types import Tensors

__all__ = ["BatchStats", "Batcher"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    inputs: Tensors
    outputs: tuple[str, ...] | None
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[Tensors]
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class BatchStats:
    """What one runtime call did, for metrics: requests merged, queue waits, compute time."""

    size: int
    queue_seconds: list[float]
    compute_seconds: float


class Batcher:
    """Runs a ``CheckedModel`` for many concurrent callers, batching where the model allows.

    ``submit`` must be called on the event loop that started the batcher; inference runs
    on a thread pool of ``instances`` threads (runtimes release the GIL).
    """

    def __init__(
        self,
        model: CheckedModel,
        config: ModelServeConfig,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        prevalidated: bool = False,
    ) -> None:
        self.model = model
        # Each request is validated once, on arrival (here, or by a caller that says it did:
        # the manager validates before its response cache); batches, merged from validated
        # requests, run without a second check.
        self._prevalidated = prevalidated
        self._run_model = model.run_validated
        self.config = config
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._queue: deque[_Pending] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._instances: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(
            config.instance_count(), thread_name_prefix="modelport-infer"
        )
        self._closed = False
        self._busy = 0
        self._arrived = asyncio.Event()
        # Moving average of what one small request costs; None until measured.
        self._small_cost: float | None = None
        self._inline_limit = config.inline_below_us / 1e6
        specs = model.signature.inputs
        self.batchable = config.max_batch_size > 0 and all(
            spec.shape is not None and len(spec.shape) >= 1 and spec.shape[0] < 0 for spec in specs
        )

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._busy > 0 or bool(self._queue)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._instances = [
            loop.create_task(self._instance()) for _ in range(self.config.instance_count())
        ]

    async def submit(
        self, inputs: Tensors, outputs: Sequence[str] | None = None, timeout: float | None = None
    ) -> Tensors:
        """Queue one request and wait for its own outputs.

        Raises:
            Unavailable: the queue is full or the batcher is closing.
            Timeout: the deadline passed before the outputs were ready.
            InvalidInput: the runtime refused this request's inputs.
            Internal: the model raised an error no runtime translated (a bug, not load).
        """
        if self._closed:
            raise Unavailable("the model is being unloaded; retry")
        if not self._prevalidated:
            self.model.validate(inputs, outputs)
        if (
            self._small_cost is not None
            and self._small_cost < self._inline_limit
            and not self._queue
            and not self._busy
            and _is_small(inputs)
        ):
            return self._run_inline(inputs, outputs)
        if len(self._queue) >= self.config.max_queue_size:
            waiting = len(self._queue)
            raise Overloaded(f"overloaded: {waiting} requests queued for this model; retry later")
        wait = self.config.timeout_ms / 1000 if timeout is None else timeout
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        rows, key = _batch_key(inputs) if self.batchable else (0, ())
        pending = _Pending(
            inputs, tuple(outputs) if outputs else None, rows, key, future, time.monotonic() + wait
        )
        self._queue.append(pending)
        self._arrived.set()
        self._report_depth()
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        try:
            async with asyncio.timeout(wait):
                return await future
        except TimeoutError:
            raise Timeout(f"no result within {wait * 1000:.0f} ms") from None

    def _run_inline(self, inputs: Tensors, outputs: Sequence[str] | None) -> Tensors:
        started = time.monotonic()
        try:
            result = self._run_model(inputs, list(outputs) if outputs else None)
        except ModelportError:
            raise
        except Exception as exc:
            log.exception("inference failed")
            raise _failed(exc) from exc
        compute = time.monotonic() - started
        self._measure(compute)
        if self._on_batch is not None:
            self._on_batch(BatchStats(1, [0.0], compute))
        return result

    def _measure(self, seconds: float) -> None:
        previous = self._small_cost
        self._small_cost = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    async def _instance(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closed:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                await waiter
            batch = await self._take_batch()
            if batch:
                self._busy += 1
                try:
                    await self._run(batch)
                finally:
                    self._busy -= 1

    async def _take_batch(self) -> list[_Pending]:
        now = time.monotonic()
        first = self._queue.popleft()
        batch = [first]
        if self.batchable:
            rows = first.rows
            limit = self._row_limit(first)
            delay = self.config.max_queue_delay_ms / 1000
            if delay > 0:
                await self._wait_to_grow(rows, limit, first.enqueued + delay)
            rows = self._gather(batch, rows, limit)
        self._report_depth()
        live = []
        for pending in batch:
            if pending.future.done():  # the caller gave up (timeout, disconnect)
                continue
            if pending.deadline < now:
                pending.future.set_exception(Timeout("the request expired while queued"))
                continue
            live.append(pending)
        return live

    def _row_limit(self, first: _Pending) -> int:
        """Rows a batch led by ``first`` may reach: ``max_batch_size``, fewer when its rows are
        large enough that ``max_batch_bytes`` comes first (requests in one batch share their
        trailing dims, so bytes per row are the same for all)."""
        limit = self.config.max_batch_size
        cap = self.config.max_batch_bytes
        if cap and first.rows:
            row_bytes = sum(array.nbytes for array in first.inputs.values()) // first.rows
            if row_bytes:
                limit = min(limit, max(1, cap // row_bytes))
        return limit

    async def _wait_to_grow(self, rows: int, limit: int, end: float) -> None:
        target = min(limit, max(self.config.preferred_batch_sizes or [limit]))
        while sum(p.rows for p in self._queue) + rows < target:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def _gather(self, batch: list[_Pending], rows: int, limit: int) -> int:
        key = batch[0].key
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.key == key and rows + pending.rows <= limit:
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
                if rows >= limit:
                    break
        kept.extend(self._queue)
        self._queue = kept
        return rows

    async def _run(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        queue_seconds = [started - p.enqueued for p in batch]
        try:
            timed = await self._execute(batch)
        except (_Unsplittable, InvalidInput) as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            if isinstance(exc, _Unsplittable):
                log.warning("%s; batching turned off for this model", exc)
                self.batchable = False
            # One request's values broke the batch, or the model cannot batch after all:
            # run each alone so only the culprit fails.
            for pending in batch:
                await self._run([pending])
            return
        except ModelportError as exc:
            for pending in batch:
                _fail(pending, exc)
            return
        except Exception as exc:
            log.exception("inference failed")
            error = _failed(exc)
            for pending in batch:
                _fail(pending, error)
            return
        results, compute = timed
        if len(batch) == 1 and _is_small(batch[0].inputs):
            self._measure(compute)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(_select(result, pending.outputs))
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(batch), queue_seconds, compute))

    async def _execute(self, batch: list[_Pending]) -> tuple[list[Tensors], float]:
        """Outputs per request, and the seconds the runtime itself took (no hand-off)."""
        loop = asyncio.get_running_loop()
        wanted = _union_outputs(batch)
        if len(batch) == 1:
            inputs = batch[0].inputs
            outputs, seconds = await loop.run_in_executor(
                self._executor, self._predict, inputs, wanted
            )
            return [outputs], seconds
        merged = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
        outputs, seconds = await loop.run_in_executor(self._executor, self._predict, merged, wanted)
        return _split(outputs, [p.rows for p in batch]), seconds

    def _predict(self, inputs: Tensors, outputs: list[str] | None) -> tuple[Tensors, float]:
        started = time.monotonic()
        result = self._run_model(inputs, outputs)
        return result, time.monotonic() - started

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))

    async def drain(self, timeout: float) -> None:
        """Stop taking requests, finish what is queued and running (up to ``timeout``)."""
        self._closed = True
        for waiter in self._idle:
            if not waiter.done():
                waiter.set_result(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*self._instances, return_exceptions=True)
        for task in self._instances:
            task.cancel()
        for pending in self._queue:
            _fail(pending, Unavailable("the model was unloaded before this request ran; retry"))
        self._queue.clear()
        self._executor.shutdown(wait=False)


_SMALL_BYTES = 64 * 1024


def _failed(exc: Exception) -> Internal:
    """What a request gets when the model raised something no runtime translated.

    ``Internal``, not ``Unavailable``: the same inputs fail the same way, so a client told
    to retry (503, Retry-After) would only repeat the failure. The traceback is in the log.
    """
    return Internal(f"inference failed: {type(exc).__name__}; see the server log")


def _is_small(inputs: Tensors) -> bool:
    return sum(array.nbytes for array in inputs.values()) <= _SMALL_BYTES


class _Unsplittable(Exception):
    """A batched output whose first dimension is not the batch: the model cannot batch."""


def _batch_key(inputs: Tensors) -> tuple[int, tuple[Any, ...]]:
    """Rows of this request and what must match to share a batch (names, dtypes, trailing dims)."""
    rows = -1
    key = []
    for name, array in inputs.items():
        if rows < 0:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidInput(
                f"input {name!r} has {array.shape[0]} rows but the other inputs have {rows}; "
                "the first dimension is the batch and must agree"
            )
        key.append((name, array.dtype.str, array.shape[1:]))
    return max(rows, 0), tuple(sorted(key))


def _union_outputs(batch: list[_Pending]) -> list[str] | None:
    if any(p.outputs is None for p in batch):
        return None
    return list(dict.fromkeys(name for p in batch for name in p.outputs or ()))


def _split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise _Unsplittable(f"output {name!r} of shape {array.shape} has no batch dimension")
    bounds = np.cumsum([0, *rows]).tolist()
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in itertools.pairwise(bounds)
    ]


def _select(outputs: Tensors, wanted: tuple[str, ...] | None) -> Tensors:
    if wanted is None:
        return outputs
    return {name: outputs[name] for name in wanted}


def _fail(pending: _Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
