"""The serving settings ``modelport tune`` tries: a small grid, pruned before it is run.

Each point is a complete set of the per-model settings tune owns (``TUNED``), so that a
server started for a point runs exactly it, whatever is stored on the version already.
"""

from __future__ import annotations

import os
from typing import Any

from modelport.serving.config import ModelServeConfig
from modelport.types import Signature

__all__ = ["TUNED", "default_point", "grid"]

TUNED = ("instances", "threads", "solo_threads", "max_batch_size", "max_queue_delay_ms")
"""The settings tune searches and stores; every other setting stays as serve has it."""

# A batch may wait this long to grow while an instance is idle: long enough for a few
# closed-loop clients to arrive, short next to any latency budget worth tuning for.
_GROW_DELAY_MS = 2.0


def default_point() -> dict[str, Any]:
    """What ``serve`` runs with nothing set, spelled out."""
    config = ModelServeConfig()
    return _point(config.instance_count(), config.thread_count(), config.solo_thread_count(),
                  config.max_batch_size, config.max_queue_delay_ms)  # fmt: skip


def grid(signature: Signature, cores: int | None = None) -> list[dict[str, Any]]:
    """The points to measure, the defaults first.

    Thread layouts: independent single-threaded instances (with and without a session that
    gives a lone request every core), one instance with every core, and on 4 or more cores
    pairs of two threads. Points that ask for more threads than there are cores are left
    out: they only contend. Batching (off, at once, or waiting ``_GROW_DELAY_MS``) is tried
    only when every input has a variable first dimension: otherwise it cannot merge.
    """
    cores = max(1, cores or os.cpu_count() or 1)
    layouts = [(cores, 1, cores), (cores, 1, 0), (1, cores, 0)]
    if cores >= 4:
        layouts.append((cores // 2, 2, 0))
    batchable = all(
        spec.shape is not None and len(spec.shape) >= 1 and spec.shape[0] < 0
        for spec in signature.inputs
    )
    default = ModelServeConfig()
    batching = [(default.max_batch_size, 0.0)]
    if batchable:
        batching += [(default.max_batch_size, _GROW_DELAY_MS), (0, 0.0)]
    points = [default_point()]
    for instances, threads, solo in layouts:
        if solo and instances < 2:
            continue
        for size, delay in batching:
            point = _point(instances, threads, solo, size, delay)
            if point not in points:
                points.append(point)
    return points


def _point(instances: int, threads: int, solo: int, size: int, delay: float) -> dict[str, Any]:
    return {
        "instances": instances,
        "threads": threads,
        "solo_threads": solo,
        "max_batch_size": size,
        "max_queue_delay_ms": delay,
    }
