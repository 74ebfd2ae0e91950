"""Benchmark: push and load of a large ONNX model through the S3 store against the local one.

The S3 server is moto in server mode, in its own process on 127.0.0.1 (as in the tests):
what this measures is the store's own overhead (hashing while sending, multipart parts in
parallel, verified download into the checkout cache), not a network. Each push goes to a
fresh home and bucket; each load starts from an empty checkout cache, so an S3 load
includes the download and its verification, and a local load the hard-linked checkout.
Both loads re-hash the checkout (the default verify policy) and build the onnxruntime
session.

    .venv/bin/python bench/store_bench.py [--size-mb 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import SAMPLE_HEADER, BenchError, Samples, load_average, machine_facts, markdown_table

CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def make_model(path: Path, size_mb: int) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count = size_mb * 2**20 // 4
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(count, dtype=np.float32), "W"
    )
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "big",
        [value("X", TensorProto.FLOAT, [count])],
        [value("Y", TensorProto.FLOAT, [count])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise BenchError("moto's S3 server did not start within 30 s")


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS)


def one_round(
    kind: str, model: Path, work: Path, endpoint: str, round_number: int
) -> tuple[float, float]:
    from modelport import Registry, Settings
    from modelport.registry.store import S3Store

    home = work / f"{kind}-{round_number}"
    settings = Settings(home=home)
    store = None
    if kind == "s3":
        bucket = f"bench-{round_number}-{int(time.time())}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        store = S3Store(f"s3://{bucket}/team", endpoint_url=endpoint, client=s3_client(endpoint))
    with Registry(settings, store=store) as registry:
        start = time.perf_counter()
        registry.push(model, "big")
        pushed = time.perf_counter() - start
        if kind == "local":
            # What a load finds on a machine that did not push: no checkout yet.
            shutil.rmtree(registry.checkout.root / "checkouts", ignore_errors=True)
        start = time.perf_counter()
        registry.load("big").close()
        loaded = time.perf_counter() - start
    shutil.rmtree(home, ignore_errors=True)
    return pushed, loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    import modelport.runtimes.onnx  # noqa: F401  (imported before any timing)

    with tempfile.TemporaryDirectory(prefix="modelport-store-bench-") as tmp:
        work = Path(tmp)
        for key, value in machine_facts(work):
            print(f"{key}: {value}")
        model = make_model(work / "big.onnx", args.size_mb)
        size = model.stat().st_size
        moto, endpoint = start_moto()
        samples = {
            (kind, what): Samples(f"{kind} store: {what}")
            for kind in ("local", "s3")
            for what in ("push", "load (empty checkout cache)")
        }
        try:
            for round_number in range(args.reps + 1):  # the first round warms up, untimed
                for kind in ("local", "s3"):
                    pushed, loaded = one_round(kind, model, work, endpoint, round_number)
                    if round_number:
                        samples[kind, "push"].add(pushed)
                        samples[kind, "load (empty checkout cache)"].add(loaded)
                print(f"round {round_number + 1}/{args.reps + 1} done", flush=True)
        finally:
            moto.terminate()
            moto.wait(timeout=30)
    print(f"\nmodel: {size / 2**20:.1f} MiB ONNX, one file\n")
    print(markdown_table(SAMPLE_HEADER, [s.row() for s in samples.values()]))
    rows = []
    for what in ("push", "load (empty checkout cache)"):
        local, s3 = samples["local", what], samples["s3", what]
        rows.append([what, f"{s3.median / local.median:.1f}x", f"{size / 1e6 / s3.median:.0f}"])
    print("\nS3 (moto on loopback) against the local store, ratio of medians:\n")
    print(markdown_table(["step", "S3 / local", "S3 MB/s"], rows))
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s; load average {load_average()}")
    sys.exit(code)
