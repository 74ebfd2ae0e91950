"""What auth and rate limiting cost: the tiny model over REST JSON at c=32, one process,
auth off against auth on (a key with a rate too high to limit), measured interleaved.

    .venv/bin/python bench/auth_cost.py [--rounds 5] [--duration 5]

Two ``modelport serve`` processes from one registry home run at once: one on loopback with
auth off, one with ``--auth``. Each round measures both back to back in a shuffled order, so
load from other work on the machine hits both alike. Prints each side's median requests/s
and p50, the server's CPU time per request (steadier than requests/s on a busy machine),
and the median of the per-round ratios (auth on / auth off); the target is at most 5% fewer
requests/s (a ratio of 0.95 or more). Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _timing import load_average, markdown_table
from serve_models import build_iris, example_input

BENCH = Path(__file__).resolve().parent
MODELPORT = str(Path(sys.executable).parent / "modelport")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(home: Path, extra: list[str], key: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``modelport serve iris@bench`` on a free port, once ready (asked with ``key``)."""
    port = free_port()
    argv = [MODELPORT, "serve", "iris@bench", "--http-port", str(port), "--no-grpc", *extra]
    env = dict(os.environ, MODELPORT_HOME=str(home))
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-1500:]}")
        try:
            headers = {"authorization": f"Bearer {key}"}
            if httpx.get(f"{url}/v2/models/iris/ready", headers=headers).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server not ready: {log.read_text()[-1500:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str, body: Path, key: str | None, concurrency: int, seconds: float
) -> dict[str, float]:
    argv = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-s", str(BENCH / "auth_wrk.lua"), f"{url}/v2/models/iris/infer", "--", str(body),
    ]  # fmt: skip
    if key:
        argv.append(key)
    started = time.monotonic()
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    line = next(x for x in text.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "errors": result["errors"],
        "requests": result["requests"],
        "elapsed": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    import orjson

    from modelport import Registry, Settings
    from modelport.security.keys import KeyStore

    with tempfile.TemporaryDirectory(prefix="modelport-auth-") as temp:
        folder = Path(temp)
        home = folder / "home"
        model = build_iris(folder / "iris.onnx")
        subprocess.run(
            [MODELPORT, "push", str(model), "--name", "iris", "--alias", "bench"],
            env=dict(os.environ, MODELPORT_HOME=str(home)), check=True, capture_output=True,
        )  # fmt: skip
        with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
            _, key = KeyStore(registry.engine).create(
                "bench", "predict", ["iris*"], rate="1000000/s"
            )
        array = example_input("iris")
        body = folder / "iris.json"
        tensor = {"name": "input", "datatype": "FP32", "shape": list(array.shape)}
        body.write_bytes(
            orjson.dumps(
                {"inputs": [{**tensor, "data": array.ravel()}]}, option=orjson.OPT_SERIALIZE_NUMPY
            )
        )
        servers = {
            "auth off": start(home, [], key, folder / "off.log"),
            "auth on": start(home, ["--auth"], key, folder / "on.log"),
        }
        keys = {"auth off": None, "auth on": key}
        rounds: list[dict[str, dict[str, float]]] = []
        loads = [load_average()]
        try:
            for side, (_, url) in servers.items():  # warm-up, untimed
                run_wrk(url, body, keys[side], args.concurrency, 1.5)
            for number in range(args.rounds):
                measured = {}
                for side in random.sample(list(servers), len(servers)):
                    proc, url = servers[side]
                    before = cpu_seconds(proc.pid)
                    point = run_wrk(url, body, keys[side], args.concurrency, args.duration)
                    point["cpu_us"] = (cpu_seconds(proc.pid) - before) / point["requests"] * 1e6
                    measured[side] = point
                rounds.append(measured)
                print(
                    f"round {number + 1}: "
                    + ", ".join(
                        f"{s} {m['rps']:,.0f}/s ({m['errors']:.0f} err)"
                        for s, m in measured.items()
                    ),
                    flush=True,
                )
            loads.append(load_average())
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    ratios = [r["auth on"]["rps"] / r["auth off"]["rps"] for r in rounds]
    rows = [
        [
            side,
            f"{statistics.median(r[side]['rps'] for r in rounds):,.0f}",
            f"{statistics.median(r[side]['p50_ms'] for r in rounds):.2f}",
            f"{statistics.median(r[side]['cpu_us'] for r in rounds):.1f}",
            f"{sum(r[side]['errors'] for r in rounds):.0f}",
        ]
        for side in servers
    ]
    header = ["server", "req/s (median)", "p50 ms", "server CPU us/request", "errors"]
    print(markdown_table(header, rows))
    print(
        f"\nauth on / auth off: {statistics.median(ratios):.3f} (range {min(ratios):.3f} - "
        f"{max(ratios):.3f}; target >= 0.95); tiny REST JSON c={args.concurrency}, "
        f"{args.rounds} rounds of {args.duration:g} s; load average {' -> '.join(loads)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
