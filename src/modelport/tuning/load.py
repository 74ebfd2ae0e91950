"""Closed-loop load on one served model: N clients, each sending its next request as soon
as the last one was answered, for a bounded time."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import numpy as np

from modelport.client import AsyncClient
from modelport.errors import ModelportError
from modelport.types import Tensors

__all__ = ["LoadResult", "drive"]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Answers per second and latency percentiles of one load point."""

    concurrency: int
    throughput: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def drive(
    url: str, name: str, requests: list[Tensors], concurrency: int, duration: float
) -> LoadResult:
    """Run ``concurrency`` clients against ``name`` at ``url`` (V2 REST, binary tensors)
    for ``duration`` seconds, after a short warm-up; errors are counted, not raised."""
    return asyncio.run(_drive(url, name, requests, concurrency, duration))


async def _drive(
    url: str, name: str, requests: list[Tensors], concurrency: int, duration: float
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    async with AsyncClient(url, retries=0, pool=concurrency) as client:
        warm_up = min(1.0, duration / 4)
        measuring_from = time.monotonic() + warm_up
        end = measuring_from + duration
        cycle = itertools.cycle(requests)

        async def one_client() -> None:
            nonlocal errors
            while (started := time.monotonic()) < end:
                try:
                    await client.predict(name, next(cycle))
                except ModelportError:
                    if started >= measuring_from:
                        errors += 1
                    continue
                if started >= measuring_from:
                    latencies.append(time.monotonic() - started)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    if not latencies:
        return LoadResult(concurrency, 0.0, float("inf"), float("inf"), 0, errors)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return LoadResult(
        concurrency, len(latencies) / duration, float(p50), float(p99), len(latencies), errors
    )
