"""A gRPC load generator for ``ModelInfer`` that costs the client as little as Python can.

The request is serialized once (``ModelInferRequest`` bytes in a file) and sent as bytes on
a generic unary call, and responses are not parsed: the client does no protobuf work per
call. N tasks on one channel (HTTP/2 streams on one connection, as ghz does by default) each
send the next call as soon as the last one returns, for a fixed time. The client measures
its own CPU, so a report can show it was not the bottleneck; several processes can share
a target start time and their results are merged by the caller.

    python bench/serve_grpc_load.py HOST:PORT REQUEST_FILE --concurrency 32 --duration 10
        [--start-at EPOCH] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE = 512 * 2**20


async def drive(
    target: str, request: bytes, concurrency: int, duration: float, start_at: float | None
) -> dict[str, Any]:
    """Run ``concurrency`` closed loops of ModelInfer for ``duration`` seconds."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD)  # no (de)serializers: bytes in, bytes out
        await asyncio.wait_for(channel.channel_ready(), 30)
        for _ in range(3):
            await call(request, timeout=60)
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        latencies: list[float] = []
        errors: dict[str, int] = {}
        started = time.perf_counter()
        stop = started + duration

        async def loop() -> None:
            clock = time.perf_counter
            while (sent := clock()) < stop:
                try:
                    await call(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                    errors[code] = errors.get(code, 0) + 1
                    continue
                latencies.append(clock() - sent)

        cpu = time.process_time()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        cpu = time.process_time() - cpu
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "cpu_seconds": cpu,
        "latencies": latencies,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target")
    parser.add_argument("request", type=Path)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--start-at", type=float, default=None, help="wall clock epoch seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = asyncio.run(
        drive(
            args.target, args.request.read_bytes(), args.concurrency, args.duration, args.start_at
        )
    )
    text = json.dumps(result)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
