"""Client benchmark: ``modelport.Client`` / ``AsyncClient`` against ``tritonclient`` on one server.

    .venv/bin/python bench/client_bench.py [--quick] [--duration 5] [--models iris,cnn]

Builds the serving benchmark's models (``serve_models.py``: iris LogisticRegression and a
ResNet-18-shaped CNN), pushes them into a throwaway MODELPORT_HOME under bench/out/client/,
starts one ``modelport serve`` and, for each model, drives the same requests with both
clients, one after the other:

- REST with binary tensors both ways (tritonclient.http with ``binary_data=True`` for the
  input and every output) and gRPC (raw contents);
- concurrency 1 (one thread), 32 threads (sync clients: one modelport ``Client`` shared by
  the threads, as its docs allow; one tritonclient per thread for HTTP, whose gevent pool
  must not cross threads, one shared for gRPC), and 32 tasks on one event loop
  (``AsyncClient`` against ``tritonclient.http.aio`` / ``tritonclient.grpc.aio``).

Every call decodes every output to numpy. Reported: requests/s of each, their ratio
(modelport / tritonclient; the target is at least 1.0x) and the client's CPU per request
(``time.process_time`` of this process, all its threads, over the requests). The server
runs in its own process and is the same for both clients: on a loaded machine compare the
ratios, not the absolute rates. Prints a Markdown table and writes it with the raw numbers
to bench/out/client/.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _timing import load_average, markdown_table
from serve_models import build_cnn, build_iris, example_input
from serve_servers import install_cleanup, modelport_server, stop_all

OUT = Path(__file__).resolve().parent / "out" / "client"
CONCURRENCY = 32
INPUT = "input"
OUTPUTS = {"iris": ["label", "probabilities"], "cnn": ["output"]}


@dataclass
class Cell:
    model: str
    transport: str
    mode: str
    client: str
    requests: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_seconds / self.requests if self.requests else 0.0


# -- load drivers --------------------------------------------------------------------------


Factory = Callable[[], tuple[Callable[[], object], Callable[[], object]]]


def drive_threads(factories: list[Factory], duration: float) -> tuple[int, float, float]:
    """One thread per factory: it makes its ``(call, close)`` (so that a client bound to its
    thread is used there), warms up, then calls back to back for ``duration`` seconds."""
    counts = [0] * len(factories)
    start = threading.Barrier(len(factories) + 1)
    stop_at = [0.0]

    def loop(index: int, factory: Factory) -> None:
        try:
            call, close = factory()
        except BaseException:
            start.abort()  # the others (and the caller) stop waiting for this one
            raise
        try:
            call()  # warm-up: connections open, sessions warm
            start.wait()
            done = 0
            while time.perf_counter() < stop_at[0]:
                call()
                done += 1
            counts[index] = done
        finally:
            close()

    threads = [threading.Thread(target=loop, args=(i, f)) for i, f in enumerate(factories)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600  # set for real once every thread is warm
    start.wait()
    cpu, began = time.process_time(), time.perf_counter()
    stop_at[0] = began + duration
    for thread in threads:
        thread.join()
    return sum(counts), time.perf_counter() - began, time.process_time() - cpu


async def drive_tasks(
    call: Callable[[], Awaitable[object]], concurrency: int, duration: float
) -> tuple[int, float, float]:
    """``concurrency`` tasks sending ``call`` back to back for ``duration`` seconds."""
    await asyncio.gather(*(call() for _ in range(concurrency)))  # warm-up
    counts = [0] * concurrency
    cpu, began = time.process_time(), time.perf_counter()
    stop_at = began + duration

    async def loop(index: int) -> None:
        while time.perf_counter() < stop_at:
            await call()
            counts[index] += 1

    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return sum(counts), time.perf_counter() - began, time.process_time() - cpu


# -- the two clients -----------------------------------------------------------------------


def modelport_sync(url: str, model: str, x: np.ndarray) -> tuple[Callable[[], object], Any]:
    from modelport import Client

    client = Client(url, pool=CONCURRENCY)
    return (lambda: client.predict(model, {INPUT: x})), client.close


def triton_sync(transport: str, target: str, model: str, x: np.ndarray) -> tuple[Any, Any]:
    if transport == "rest":
        import tritonclient.http as triton
    else:
        import tritonclient.grpc as triton  # type: ignore[no-redef]
    client = triton.InferenceServerClient(target)
    item = triton.InferInput(INPUT, list(x.shape), "FP32")
    if transport == "rest":
        item.set_data_from_numpy(x, binary_data=True)
        wanted = [triton.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS[model]]
    else:
        item.set_data_from_numpy(x)
        wanted = [triton.InferRequestedOutput(n) for n in OUTPUTS[model]]

    def call() -> object:
        result = client.infer(model, [item], outputs=wanted)
        return [result.as_numpy(name) for name in OUTPUTS[model]]

    return call, client.close


async def modelport_async(
    url: str, model: str, x: np.ndarray, duration: float
) -> tuple[int, float, float]:
    from modelport import AsyncClient

    async with AsyncClient(url, pool=CONCURRENCY) as client:
        return await drive_tasks(lambda: client.predict(model, {INPUT: x}), CONCURRENCY, duration)


async def triton_async(
    transport: str, target: str, model: str, x: np.ndarray, duration: float
) -> tuple[int, float, float]:
    if transport == "rest":
        import tritonclient.http.aio as triton
    else:
        import tritonclient.grpc.aio as triton  # type: ignore[no-redef]
    client = triton.InferenceServerClient(target)
    item = triton.InferInput(INPUT, list(x.shape), "FP32")
    if transport == "rest":
        item.set_data_from_numpy(x, binary_data=True)
        wanted = [triton.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS[model]]
    else:
        item.set_data_from_numpy(x)
        wanted = [triton.InferRequestedOutput(n) for n in OUTPUTS[model]]

    async def call() -> object:
        result = await client.infer(model, [item], outputs=wanted)
        return [result.as_numpy(name) for name in OUTPUTS[model]]

    try:
        return await drive_tasks(call, CONCURRENCY, duration)
    finally:
        await client.close()


# -- the run -------------------------------------------------------------------------------


def _shared(call: Callable[[], object]) -> Factory:
    return lambda: (call, lambda: None)


def measure(http_port: int, grpc_port: int, model: str, duration: float) -> list[Cell]:
    x = example_input(model)
    cells = []
    for transport in ("rest", "grpc"):
        port = http_port if transport == "rest" else grpc_port
        target = f"127.0.0.1:{port}"
        url = f"http://{target}" if transport == "rest" else f"grpc://{target}"
        for mode, threads in (("c=1", 1), (f"c={CONCURRENCY} threads", CONCURRENCY)):
            # One modelport Client shared by the threads; tritonclient's gRPC client shared
            # too, its HTTP client one per thread (its gevent pool is bound to a thread).
            call, close = modelport_sync(url, model, x)
            numbers = drive_threads([_shared(call)] * threads, duration)
            close()
            cells.append(Cell(model, transport, mode, "modelport", *numbers))
            if transport == "grpc":
                call, close = triton_sync(transport, target, model, x)
                numbers = drive_threads([_shared(call)] * threads, duration)
                close()
            else:
                factory = functools.partial(triton_sync, transport, target, model, x)
                numbers = drive_threads([factory] * threads, duration)
            cells.append(Cell(model, transport, mode, "tritonclient", *numbers))
        mode = f"c={CONCURRENCY} async"
        numbers = asyncio.run(modelport_async(url, model, x, duration))
        cells.append(Cell(model, transport, mode, "modelport", *numbers))
        numbers = asyncio.run(triton_async(transport, target, model, x, duration))
        cells.append(Cell(model, transport, mode, "tritonclient", *numbers))
        for cell in cells[-2:]:
            print(f"  {model} {transport} {cell.mode} {cell.client}: {cell.rate:,.0f} req/s")
    return cells


def report(cells: list[Cell]) -> str:
    rows = []
    for ours, theirs in zip(cells[0::2], cells[1::2], strict=True):
        ratio = ours.rate / theirs.rate if theirs.rate else float("nan")
        rows.append(
            [
                ours.model,
                "REST binary" if ours.transport == "rest" else "gRPC",
                ours.mode,
                f"{ours.rate:,.0f}",
                f"{theirs.rate:,.0f}",
                f"{ratio:.2f}x",
                f"{ours.cpu_us:,.0f}",
                f"{theirs.cpu_us:,.0f}",
            ]
        )
    header = [
        "model", "transport", "load", "modelport req/s", "tritonclient req/s", "ratio",
        "modelport CPU µs/req", "tritonclient CPU µs/req",
    ]  # fmt: skip
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1.5 s per point")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--models", default="iris,cnn", help="comma-separated: iris, cnn")
    args = parser.parse_args(argv)
    duration = 1.5 if args.quick else args.duration
    models = [m for m in args.models.split(",") if m]

    install_cleanup()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    home = OUT / "home"
    modelport = str(Path(sys.executable).parent / "modelport")
    builders = {"iris": build_iris, "cnn": build_cnn}
    for model in models:
        path = builders[model](OUT / f"{model}.onnx")
        subprocess.run(
            [modelport, "push", str(path), "--name", model],
            check=True, env=dict(os.environ, MODELPORT_HOME=str(home)),
        )  # fmt: skip
    server = modelport_server(home, models, OUT / "serve.log", [])
    cells: list[Cell] = []
    try:
        server.start(["/v2/health/ready"])
        assert server.grpc_port is not None
        load = load_average()
        for model in models:
            cells += measure(server.http_port, server.grpc_port, model, duration)
    finally:
        stop_all()
    table = report(cells)
    text = f"Client benchmark, {duration:g} s per point, load average before: {load}.\n\n{table}\n"
    print("\n" + text)
    (OUT / "results.md").write_text(text)
    (OUT / "results.json").write_text(json.dumps([asdict(c) for c in cells], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
