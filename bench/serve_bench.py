"""Serving benchmark: modelport vs MLServer, a bare Starlette endpoint and the in-process limit.

    .venv/bin/python bench/serve_bench.py [--quick] [--duration 10]

Builds two ONNX models (``serve_models.py``: iris LogisticRegression and a ResNet-18-shaped
CNN), pushes them into a throwaway MODELPORT_HOME under bench/out/serve/, measures the
in-process onnxruntime limit, then starts each server alone on free loopback ports, waits
until it is ready and drives load at concurrency 1, 8 and 32:

- REST JSON and REST binary (``Inference-Header-Content-Length``) with wrk and
  ``serve_wrk.lua``, request bodies pre-built as files; one wrk thread, N connections.
- gRPC ``ModelInfer`` with ``serve_grpc_load.py`` (pre-serialized request, no protobuf work
  per call); when one client process uses 90% of a core, the point is run again with two.

Servers: ``modelport serve`` (defaults); MLServer 1.7 with the custom runtime of
``peers_mlserver.py`` in a venv under bench/out/ (parallel_workers at its default, adaptive
batching off and on; parallel_workers 0 and 2 at concurrency 32); ``peers_starlette.py`` (REST
JSON only). Prints Markdown tables (requests/s, p50, p99, server CPU per request), the ratios
the serving issue sets as targets, and each server's memory; writes them with the raw
numbers to bench/out/serve/. Every server started is stopped at the end, even on failure.

wrk is Debian's package: ``apt-get install wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from _timing import load_average, machine_facts
from serve_report import render
from serve_servers import (
    BENCH,
    Server,
    ensure_mlserver,
    install_cleanup,
    mlserver_server,
    modelport_server,
    starlette_server,
    stop_all,
)

OUT = BENCH / "out" / "serve"
PROTOCOLS = ("rest-json", "rest-binary", "grpc")
MODELS = ("iris", "cnn")
CLIENT_SATURATED = 0.9  # of one core


@dataclass
class Point:
    """One measured load: who, what, how hard, and what came out."""

    server: str
    variant: str
    model: str
    protocol: str
    concurrency: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    server_cpu_ms: float = 0.0  # server CPU (all its processes) per request
    client_cpu: float = 0.0  # load generator CPU, in cores
    client_processes: int = 1
    failure: str = ""


@dataclass
class Plan:
    """Which server variants run which points."""

    durations: tuple[float, float]  # measured, warm-up
    models: tuple[str, ...]
    protocols: tuple[str, ...]
    concurrency: tuple[int, ...]
    servers: tuple[str, ...]
    limit_seconds: float | None  # None: no in-process limit
    modelport_args: list[str] = field(default_factory=list)


# -- requests --------------------------------------------------------------------------------


def build_requests(models: Path, out: Path) -> dict[str, dict[str, tuple[Path, int | None]]]:
    """Request files per model and protocol: (path, JSON header length for binary REST)."""
    import numpy as np
    import orjson
    from serve_models import example_input

    from modelport._generated import grpc_predict_v2_pb2 as pb

    out.mkdir(parents=True, exist_ok=True)
    requests: dict[str, dict[str, tuple[Path, int | None]]] = {}
    for model in MODELS:
        array = example_input(model)
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        tensor = {"name": "input", "datatype": "FP32", "shape": list(array.shape)}
        json_body = orjson.dumps(
            {"inputs": [{**tensor, "data": array.ravel()}]}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        header = orjson.dumps(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                "parameters": {"binary_data_output": True},
            }
        )
        grpc_body = pb.ModelInferRequest(
            model_name=model,
            inputs=[pb.ModelInferRequest.InferInputTensor(**tensor)],
            raw_input_contents=[raw],
        ).SerializeToString()
        paths = {}
        for protocol, body in (
            ("rest-json", json_body),
            ("rest-binary", header + raw),
            ("grpc", grpc_body),
        ):
            path = out / f"{model}.{protocol}.bin"
            path.write_bytes(body)
            paths[protocol] = (path, len(header) if protocol == "rest-binary" else None)
        requests[model] = paths
    index = {
        m: {p: [str(path), header] for p, (path, header) in r.items()} for m, r in requests.items()
    }
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return requests


def check_request(server: Server, model: str, body: Path, header_length: int | None) -> None:
    """One REST request must succeed before load is put on it."""
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if header_length is not None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
    request = urllib.request.Request(
        f"{server.base_url}/v2/models/{model}/infer", data=body.read_bytes(), headers=headers
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        payload = response.read()
    if response.status != 200 or b"outputs" not in payload[:4096]:
        raise RuntimeError(f"{server.name} answered {response.status}: {payload[:300]!r}")


# -- load generators -------------------------------------------------------------------------


def run_wrk(
    url: str, body: Path, header: int | None, concurrency: int, seconds: float
) -> dict[str, Any]:
    argv = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-s", str(BENCH / "serve_wrk.lua"), url, "--", str(body),
    ]  # fmt: skip
    if header is not None:
        argv.append(str(header))
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        output.seek(0)
        text = output.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if os.waitstatus_to_exitcode(status) != 0 or not lines:
        raise RuntimeError(f"wrk failed: {text[-1500:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    seconds_run = result["duration_us"] / 1e6
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "requests": result["requests"],
        "rps": result["requests"] / seconds_run,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": errors,
        "client_cpu": (usage.ru_utime + usage.ru_stime) / seconds_run,
    }


def run_grpc(
    target: str, request: Path, concurrency: int, seconds: float, processes: int
) -> dict[str, Any]:
    start_at = time.time() + 3.0  # every client connected and warmed up by then
    with tempfile.TemporaryDirectory() as folder:
        children = []
        for index in range(processes):
            share = concurrency // processes + (1 if index < concurrency % processes else 0)
            argv = [
                sys.executable, str(BENCH / "serve_grpc_load.py"), target, str(request),
                "--concurrency", str(share), "--duration", str(seconds),
                "--start-at", str(start_at), "--out", f"{folder}/{index}.json",
            ]  # fmt: skip
            children.append(subprocess.Popen(argv, stderr=subprocess.PIPE))
        failures = []
        for child in children:
            _, errors = child.communicate(timeout=seconds + 120)
            if child.returncode != 0:
                failures.append(errors.decode(errors="replace")[-1500:])
        if failures:
            raise RuntimeError(f"gRPC load failed: {failures[0]}")
        parts = [json.loads(Path(f"{folder}/{i}.json").read_text()) for i in range(processes)]
    latencies = sorted(value for part in parts for value in part["latencies"])
    elapsed = max(part["elapsed"] for part in parts)
    requests = len(latencies)
    if not requests:
        raise RuntimeError(f"no gRPC call succeeded: {parts[0]['errors']}")
    return {
        "requests": requests,
        "rps": requests / elapsed,
        "p50_ms": latencies[int(0.50 * (requests - 1))] * 1000,
        "p99_ms": latencies[int(0.99 * (requests - 1))] * 1000,
        "errors": sum(sum(part["errors"].values()) for part in parts),
        "client_cpu": sum(part["cpu_seconds"] for part in parts) / elapsed,
    }


def measure(
    server: Server,
    point: Point,
    request: tuple[Path, int | None],
    seconds: float,
) -> Point:
    """Put ``point``'s load on ``server`` and fill in what came out."""
    body, header = request
    url = f"{server.base_url}/v2/models/{point.model}/infer"
    cpu_before = server.cpu_seconds()
    if point.protocol == "grpc":
        target = f"127.0.0.1:{server.grpc_port}"
        result = run_grpc(target, body, point.concurrency, seconds, 1)
        if result["client_cpu"] >= CLIENT_SATURATED:
            cpu_before = server.cpu_seconds()
            second = run_grpc(target, body, point.concurrency, seconds, 2)
            if second["rps"] > result["rps"]:
                result = second
                point.client_processes = 2
    else:
        result = run_wrk(url, body, header, point.concurrency, seconds)
    cpu = server.cpu_seconds() - cpu_before
    point.rps, point.p50_ms, point.p99_ms = result["rps"], result["p50_ms"], result["p99_ms"]
    point.errors, point.client_cpu = result["errors"], result["client_cpu"]
    point.server_cpu_ms = cpu / max(1, result["requests"]) * 1000
    wait_idle(server)
    return point


def wait_idle(server: Server, limit: float = 60.0) -> None:
    """Wait until ``server`` has finished what the load left queued (its CPU use stops).

    A closed loop stops with up to N requests still queued in the server; for the CNN at
    concurrency 32 that is seconds of CPU that would otherwise be charged to the next point.
    """
    deadline = time.monotonic() + limit
    before = server.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = server.cpu_seconds()
        if now - before < 0.05:  # under 10% of a core over half a second
            return
        before = now


# -- servers ---------------------------------------------------------------------------------


def bench_server(
    server: Server,
    variant: str,
    models: dict[str, tuple[str, ...]],
    concurrency: tuple[int, ...],
    requests: dict[str, dict[str, tuple[Path, int | None]]],
    plan: Plan,
    ready: list[str],
) -> tuple[list[Point], dict[str, Any]]:
    """Start ``server``, run every point on it, stop it; the points and its memory."""
    seconds, warmup = plan.durations
    points: list[Point] = []
    memory: dict[str, Any] = {"server": server.name, "variant": variant}
    print(f"\n== {server.name} [{variant}]: starting", flush=True)
    memory["load"] = load_average().split()[0]
    try:
        server.start(ready)
        memory["ready"] = server.memory()
        for model, protocols in models.items():
            for protocol in protocols:
                request = requests[model][protocol]
                if protocol != "grpc":
                    check_request(server, model, *request)
                warm = Point(server.name, variant, model, protocol, 8)
                measure(server, warm, request, warmup)
                for level in concurrency:
                    point = Point(server.name, variant, model, protocol, level)
                    try:
                        measure(server, point, request, seconds)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        point.failure = str(exc)[:500]
                    points.append(point)
                    print(f"   {_line(point)}", flush=True)
        memory["after_load"] = server.memory()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        failure = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"   FAILED: {failure}", flush=True)
        memory["failure"] = failure
    finally:
        server.stop()
        memory["load"] += f" -> {load_average().split()[0]}"
    return points, memory


def _line(point: Point) -> str:
    if point.failure:
        return f"{point.model} {point.protocol} c={point.concurrency}: FAILED {point.failure[:200]}"
    return (
        f"{point.model} {point.protocol} c={point.concurrency}: {point.rps:,.1f} req/s, "
        f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, errors {point.errors}, "
        f"server {point.server_cpu_ms:.3f} CPU-ms/req, client {point.client_cpu:.2f} cores"
        + (f" ({point.client_processes} processes)" if point.client_processes > 1 else "")
    )


def run_all(plan: Plan, home: Path, model_files: dict[str, Path], requests: Any) -> dict[str, Any]:
    points: list[Point] = []
    memories: list[dict[str, Any]] = []
    mlserver_versions = "not run"
    models = dict.fromkeys(plan.models, plan.protocols)
    ready = ["/v2/health/ready"]

    measured: list[dict[str, Any]] = []

    def take_limits(when: str, names: tuple[str, ...]) -> None:
        if plan.limit_seconds is None:
            return
        for model in names:
            print(f"in-process limit of {model} ({when}) ...", flush=True)
            limit = in_process_limit(model_files[model], plan.limit_seconds)
            limit["when"] = when
            measured.append(limit)
            print(f"   {limit}", flush=True)

    # The limit is taken right before and right after modelport's run, so that the ratio
    # compares numbers measured under the same conditions on a machine others may be using.
    take_limits("before modelport", plan.models)
    if "modelport" in plan.servers:
        refs = [f"{m}@bench" for m in plan.models]
        server = modelport_server(home, refs, OUT / "modelport.log", plan.modelport_args)
        variant = " ".join(plan.modelport_args) or "defaults"
        got, memory = bench_server(server, variant, models, plan.concurrency, requests, plan, ready)
        points += got
        memories.append(memory)
        take_limits("after modelport", tuple(m for m in plan.models if m == "cnn"))

    if "mlserver" in plan.servers:
        python, mlserver_versions = ensure_mlserver(
            BENCH / "out" / "venv-mlserver", OUT / "mlserver-install.log"
        )
        if python is None:
            print(f"\n== MLServer not run: {mlserver_versions}", flush=True)
        else:
            no_binary = {
                m: tuple(p for p in plan.protocols if p != "rest-binary") for m in plan.models
            }
            at_32 = tuple(c for c in plan.concurrency if c == 32)
            variants = [
                (
                    "parallel_workers=1 (default), batching off",
                    None,
                    False,
                    plan.concurrency,
                    no_binary,
                ),
                (
                    "parallel_workers=1 (default), batching 32/5 ms",
                    None,
                    True,
                    plan.concurrency,
                    no_binary,
                ),
                ("parallel_workers=0, batching off", 0, False, at_32, no_binary),
                ("parallel_workers=2, batching off", 2, False, at_32, no_binary),
            ]
            for index, (variant, workers, batching, levels, protocols) in enumerate(variants):
                if not levels:
                    continue
                root = OUT / f"mlserver-{index}"
                shutil.rmtree(root, ignore_errors=True)
                served = {m: model_files[m] for m in plan.models}
                server = mlserver_server(
                    python, root, served, workers=workers, batching=batching,
                    log=OUT / f"mlserver-{index}.log",
                )  # fmt: skip
                model_ready = [f"/v2/models/{m}/ready" for m in plan.models]
                got, memory = bench_server(
                    server, variant, protocols, levels, requests, plan, model_ready
                )
                points += got
                memories.append(memory)

    if "starlette" in plan.servers and "rest-json" in plan.protocols:
        for model in plan.models:
            server = starlette_server(model_files[model], OUT / f"starlette-{model}.log")
            got, memory = bench_server(
                server,
                f"{model} only",
                {model: ("rest-json",)},
                plan.concurrency,
                requests,
                plan,
                ready,
            )
            points += got
            memories.append(memory)
    return {
        "points": points,
        "memory": memories,
        "mlserver_versions": mlserver_versions,
        "limits": _combine(measured),
        "limits_measured": measured,
    }


def _combine(measured: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, the limit the targets use: the mean of its measurements' best."""
    combined = {}
    for model in dict.fromkeys(m["model"] for m in measured):
        mine = [m for m in measured if m["model"] == model]
        best = sum(m["best"] for m in mine) / len(mine)
        how = "; ".join(f"{m['best']:,.1f} {m['when']} ({m['best_how']})" for m in mine)
        combined[model] = {"best": best, "best_how": f"mean of {how}" if len(mine) > 1 else how}
    return combined


# -- set-up ----------------------------------------------------------------------------------


def in_process_limit(model: Path, seconds: float) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH / "serve_models.py"),
        "limit",
        str(model),
        "--seconds",
        str(seconds),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(done.stdout))


def push_models(home: Path, model_files: dict[str, Path]) -> None:
    shutil.rmtree(home, ignore_errors=True)
    modelport = Path(sys.executable).parent / "modelport"
    env = dict(os.environ, MODELPORT_HOME=str(home))
    for name, path in model_files.items():
        subprocess.run(
            [str(modelport), "push", str(path), "--name", name, "--alias", "bench"],
            env=env, check=True, capture_output=True, timeout=300,
        )  # fmt: skip


def versions() -> dict[str, str]:
    packages = (
        "modelport", "onnxruntime", "numpy", "starlette", "uvicorn", "uvloop", "httptools",
        "orjson", "grpcio", "protobuf", "pydantic", "onnx", "scikit-learn", "skl2onnx",
    )  # fmt: skip
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    found["wrk"] = (wrk.stdout or wrk.stderr).split(" [")[0].removeprefix("wrk ").strip()
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per point, short limits")
    parser.add_argument("--duration", type=float, default=None, help="seconds per point (10)")
    parser.add_argument("--servers", default="modelport,mlserver,starlette")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--no-limit", action="store_true", help="skip the in-process limit")
    parser.add_argument(
        "--modelport-arg", action="append", default=[], help="extra `modelport serve` flag"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    install_cleanup()
    seconds = args.duration or (3.0 if args.quick else 10.0)
    plan = Plan(
        durations=(seconds, 1.0 if args.quick else 2.0),
        models=tuple(args.models.split(",")),
        protocols=tuple(args.protocols.split(",")),
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        servers=tuple(args.servers.split(",")),
        limit_seconds=None if args.no_limit else (1.0 if args.quick else 3.0),
        modelport_args=args.modelport_arg,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    facts = machine_facts(BENCH.parent)
    load_before = load_average()
    model_dir = BENCH / "out" / "models"
    subprocess.run(
        [sys.executable, str(BENCH / "serve_models.py"), "build", str(model_dir)], check=True
    )
    model_files = {m: model_dir / f"{m}.onnx" for m in MODELS}
    home = OUT / "home"
    push_models(home, model_files)
    requests = build_requests(model_dir, OUT / "requests")
    try:
        results = run_all(plan, home, model_files, requests)
    finally:
        stop_all()
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "facts": facts,
        "load_before": load_before,
        "load_after": load_average(),
        "wall_seconds": time.monotonic() - started,
        "durations": plan.durations,
        "versions": versions(),
        "mlserver_versions": results["mlserver_versions"],
        "limits": results["limits"],
        "limits_measured": results["limits_measured"],
        "points": [asdict(p) for p in results["points"]],
        "memory": results["memory"],
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (OUT / f"results-{stamp}.json").write_text(json.dumps(report, indent=1))
    text = render(report)
    (OUT / f"report-{stamp}.md").write_text(text)
    print("\n" + text)
    print(f"\nwritten: {OUT}/results-{stamp}.json and report-{stamp}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
