"""The Batcher in-process, on real ONNX models: every caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from modelport import Registry, Timeout, Unavailable
from modelport.serving.batching import Batcher, BatchStats
from modelport.serving.config import ModelServeConfig
from tests.onnx_models import iris_data, make_slow_model


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_and_split_exactly(
    registry: Registry, iris_onnx: Path
) -> None:
    registry.push(iris_onnx, "iris")
    model = registry.load("iris")
    features, _ = iris_data()
    expected = model.predict({"input": features})
    sizes: list[int] = []

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = Batcher(
            model, ModelServeConfig(max_batch_size=64), on_batch=lambda s: sizes.append(s.size)
        )
        batcher.start()
        # requests of 1..3 rows each, all at once
        slices = [(i, i + 1 + i % 3) for i in range(0, 140, 4)]
        results = await asyncio.gather(
            *(batcher.submit({"input": features[a:b]}) for a, b in slices)
        )
        await batcher.drain(5)
        for (a, b), result in zip(slices, results, strict=True):
            np.testing.assert_array_equal(result["label"], expected["label"][a:b])
            np.testing.assert_allclose(
                result["probabilities"], expected["probabilities"][a:b], rtol=1e-6
            )
        return results

    _run(main())
    assert max(sizes) > 1, sizes  # batches formed
    assert sum(sizes) == 35


def test_batches_of_large_inputs_stop_at_max_batch_bytes(
    registry: Registry, tmp_path: Path
) -> None:
    registry.push(make_slow_model(tmp_path / "slow.onnx", depth=4), "slow")
    model = registry.load("slow")
    row = 512 * 4  # bytes per row of x: 512 FP32 values
    config = ModelServeConfig(max_batch_size=64, max_batch_bytes=5 * row, instances=1)
    sizes: list[int] = []

    async def main() -> None:
        batcher = Batcher(model, config, on_batch=lambda s: sizes.append(s.size))
        batcher.start()
        rows = [np.full((2, 512), i, np.float32) for i in range(40)]  # 4 KiB each
        big = np.full((9, 512), -1.0, np.float32)  # over the cap alone: still runs, alone
        results = await asyncio.gather(
            *(batcher.submit({"x": x}) for x in [*rows, big]), batcher.submit({"x": rows[0]})
        )
        await batcher.drain(5)
        for x, result in zip([*rows, big, rows[0]], results, strict=True):
            np.testing.assert_allclose(result["y"], x, rtol=1e-6)  # identity weights

    _run(main())
    # Two 2-row requests fill 4 of the 5 rows a batch may hold (10 KiB); a third would not fit.
    # (Without the byte cap, batches of up to 32 of these requests form.) The 9-row request
    # ran, alone.
    assert max(sizes) == 2, sizes
    assert sum(sizes) == 42


def test_an_idle_instance_dispatches_at_once(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris")
    model = registry.load("iris")
    stats: list[BatchStats] = []

    async def main() -> None:
        batcher = Batcher(model, ModelServeConfig(max_batch_size=64), on_batch=stats.append)
        batcher.start()
        for _ in range(5):
            await batcher.submit({"input": np.zeros((1, 4), np.float32)})
        await batcher.drain(5)

    _run(main())
    assert [s.size for s in stats] == [1] * 5
    assert all(w < 0.05 for s in stats for w in s.queue_seconds)


def test_requested_outputs_are_per_caller(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris")
    model = registry.load("iris")

    async def main() -> None:
        batcher = Batcher(model, ModelServeConfig(max_batch_size=8))
        batcher.start()
        x = np.zeros((1, 4), np.float32)
        a, b, c = await asyncio.gather(
            batcher.submit({"input": x}, ["label"]),
            batcher.submit({"input": x}, ["probabilities"]),
            batcher.submit({"input": x}),
        )
        assert list(a) == ["label"]
        assert list(b) == ["probabilities"]
        assert sorted(c) == ["label", "probabilities"]
        await batcher.drain(5)

    _run(main())


def test_full_queue_refuses_at_once_and_deadlines_hold(registry: Registry, tmp_path: Path) -> None:
    registry.push(make_slow_model(tmp_path / "slow.onnx"), "slow")
    model = registry.load("slow")
    x = np.ones((256, 512), np.float32)

    async def main() -> None:
        batcher = Batcher(model, ModelServeConfig(max_batch_size=0, max_queue_size=2))
        batcher.start()
        first = asyncio.create_task(batcher.submit({"x": x}))
        await _running(batcher)
        waiting = [asyncio.create_task(batcher.submit({"x": x})) for _ in range(2)]
        await asyncio.sleep(0)  # the queue is full
        with pytest.raises(Unavailable, match="overloaded: 2 requests queued"):
            await batcher.submit({"x": x})
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert all(isinstance(r, dict) for r in results), results
        blocker = asyncio.create_task(batcher.submit({"x": x}))
        await _running(batcher)
        with pytest.raises(Timeout, match="no result within"):
            await batcher.submit({"x": x}, timeout=0.001)
        await blocker
        await batcher.drain(5)

    _run(main())


async def _running(batcher: Batcher, timeout: float = 30) -> None:
    """Return once the batcher has taken what was queued and is running it."""
    async with asyncio.timeout(timeout):
        while batcher.depth or not batcher.busy:
            await asyncio.sleep(0)


def test_a_bad_request_in_a_batch_fails_alone(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris")
    model = registry.load("iris")

    async def main() -> None:
        batcher = Batcher(model, ModelServeConfig(max_batch_size=8, instances=1))
        batcher.start()
        good = np.zeros((1, 4), np.float32)
        bad = np.zeros((1, 5), np.float32)  # a shape the runtime refuses
        results = await asyncio.gather(
            *(batcher.submit({"input": bad if i == 3 else good}) for i in range(6)),
            return_exceptions=True,
        )
        assert [isinstance(r, Exception) for r in results] == [
            False,
            False,
            False,
            True,
            False,
            False,
        ]
        await batcher.drain(5)

    _run(main())


def test_drain_finishes_queued_work(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris")
    model = registry.load("iris")

    async def main() -> None:
        batcher = Batcher(model, ModelServeConfig(max_batch_size=4))
        batcher.start()
        tasks = [
            asyncio.create_task(batcher.submit({"input": np.zeros((1, 4), np.float32)}))
            for _ in range(20)
        ]
        await asyncio.sleep(0)
        await batcher.drain(5)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, dict) for r in results)
        with pytest.raises(Unavailable, match="unloaded"):
            await batcher.submit({"input": np.zeros((1, 4), np.float32)})

    _run(main())
