"""What TLS costs a server: the tiny model over REST JSON at concurrency 32, plain vs TLS.

    .venv/bin/python bench/tls_cost.py [--rounds 5] [--duration 5] [--concurrency 32]

Pushes ``build_iris`` into a throwaway home, makes test certificates (``tests/tls_certs``),
starts two ``modelport serve`` processes from the same registry (one plain, one with
``--tls-cert/--tls-key``) and measures them with wrk and ``serve_wrk.lua``, round after
round in a shuffled order so that other load on the machine hits both alike. wrk keeps its
connections open, so this is the cost of encrypting requests and responses, not of
handshakes (a client that reconnects for every request pays a handshake each time:
keep connections open). Prints the median requests/s of each and the median of the
per-round ratios (TLS / plain).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from serve_bench import run_wrk
from serve_models import build_iris
from serve_servers import BENCH, free_port

sys.path.insert(0, str(BENCH.parent))
from tests.tls_certs import TlsFiles, make_tls_files

MODELPORT = str(Path(sys.executable).parent / "modelport")
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip


@contextlib.contextmanager
def serving(home: Path, tls: TlsFiles | None, log: Path) -> Iterator[str]:
    """A ``modelport serve iris`` (REST only), plain or with ``tls``; yields its base URL."""
    port = free_port()
    args = [MODELPORT, "serve", "iris", "--http-port", str(port), "--no-grpc"]
    if tls is not None:
        args += tls.server_args()
    env = dict(os.environ, MODELPORT_HOME=str(home))
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify = tls.context() if tls is not None else True
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/v2/health/ready", verify=verify).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready: {log.read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tls-cost-") as folder:
        root = Path(folder)
        home = root / "home"
        model = build_iris(root / "iris.onnx")
        env = dict(os.environ, MODELPORT_HOME=str(home))
        subprocess.run([MODELPORT, "push", str(model), "--name", "iris"], env=env, check=True)
        tls = make_tls_files(root / "certs")
        body = root / "body.json"
        body.write_text(json.dumps(BODY))
        rps: dict[str, list[float]] = {"plain": [], "tls": []}
        with (
            serving(home, None, root / "plain.log") as plain,
            serving(home, tls, root / "tls.log") as secure,
        ):
            urls = {"plain": plain, "tls": secure}
            for url in urls.values():  # warm-up, not counted
                run_wrk(f"{url}/v2/models/iris/infer", body, None, options.concurrency, 2)
            for _ in range(options.rounds):
                for side in random.sample(list(urls), len(urls)):
                    url = f"{urls[side]}/v2/models/iris/infer"
                    result = run_wrk(url, body, None, options.concurrency, options.duration)
                    assert result["errors"] == 0, result
                    rps[side].append(result["rps"])
    ratios = [t / p for t, p in zip(rps["tls"], rps["plain"], strict=True)]
    rounds = f"{options.rounds} rounds of {options.duration:g} s"
    print(f"tiny REST JSON c={options.concurrency}, {rounds}")
    print("| server | requests/s (median) | rounds |")
    print("|--------|---------------------|--------|")
    for side, values in rps.items():
        each = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {side} | {statistics.median(values):,.0f} | {each} |")
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    print(f"TLS / plain: {statistics.median(ratios):.3f} (range {spread})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
