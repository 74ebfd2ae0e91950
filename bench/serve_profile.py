"""Where a modelport server spends its CPU under load: py-spy while wrk drives one point.

    .venv/bin/python bench/serve_profile.py [--model iris] [--protocol rest-json]
        [--concurrency 32] [--duration 15] [--native]

Uses the models and request files ``serve_bench.py`` leaves in bench/out/ (run it first, even
with ``--quick``), installs py-spy into a throwaway venv under bench/out/, starts
``modelport serve`` alone, and while wrk (or the gRPC client) loads it, samples the server
with ``py-spy record --format raw`` (idle samples left out). Prints the functions with the
most samples on-CPU by themselves (self) and below them (inclusive), as shares of all
samples, and keeps the collapsed stacks (a flame graph's input) in bench/out/serve/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from serve_bench import OUT, Point, measure
from serve_servers import BENCH, install_cleanup, modelport_server, stop_all


def ensure_pyspy() -> Path:
    venv = BENCH / "out" / "venv-pyspy"
    pyspy = venv / "bin" / "py-spy"
    if not pyspy.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return pyspy


def summarize(collapsed: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    below: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            below[frame] += count
    lines = [f"{total} samples on CPU", "", "self:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in below.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"; lines vary, functions do not.
    name, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
    return f"{name} ({module})" if module else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="iris")
    parser.add_argument("--protocol", default="rest-json")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--native", action="store_true", help="include C frames (slower)")
    parser.add_argument("--modelport-arg", action="append", default=[])
    args = parser.parse_args(argv)
    install_cleanup()
    pyspy = ensure_pyspy()
    home = OUT / "home"
    index = OUT / "requests" / "index.json"
    if not index.is_file() or not home.is_dir():
        print("run bench/serve_bench.py --quick first: it builds models and requests")
        return 2
    path, header = json.loads(index.read_text())[args.model][args.protocol]
    body = Path(path)
    stacks = OUT / f"profile-{args.model}-{args.protocol}-c{args.concurrency}.txt"
    server = modelport_server(
        home, [f"{args.model}@bench"], OUT / "profile.log", args.modelport_arg
    )
    try:
        server.start(["/v2/health/ready"])
        assert server.process is not None
        warm = Point("modelport", "", args.model, args.protocol, 8)
        measure(server, warm, (body, header), 2.0)
        record = [
            str(pyspy), "record", "--pid", str(server.process.pid), "--format", "raw",
            "--rate", "200", "--duration", str(int(args.duration)), "--output", str(stacks),
            "--nonblocking",
        ]  # fmt: skip
        if args.native:
            record.append("--native")
        sampler = threading.Thread(
            target=subprocess.run, args=(record,), kwargs={"capture_output": True}
        )
        sampler.start()
        point = Point("modelport", "", args.model, args.protocol, args.concurrency)
        measure(server, point, (body, header), args.duration - 1)
        sampler.join()
    finally:
        stop_all()
    print(
        f"{args.model} {args.protocol} c={args.concurrency}: {point.rps:,.0f} req/s, "
        f"{point.server_cpu_ms:.3f} server CPU-ms/req (profiled, so slower than unprofiled)"
    )
    print(summarize(stacks))
    print(f"\ncollapsed stacks: {stacks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
