"""Before/after: the same serving points on two source trees, measured interleaved.

    .venv/bin/python bench/serve_ab.py --base 2fb037a [--rounds 5] [--duration 5]

A change to the hot path must show no regression at concurrency 1 as well as under load.
Two ``modelport serve`` processes run at once from the same registry home: one from this
tree, one from ``--base`` (a git commit, checked out into a temporary worktree and put first
on its ``PYTHONPATH``; both use this venv's packages). Every round measures each point on
both servers back to back, in a shuffled order, so load from other work on the machine hits
both alike. Reports each side's median requests/s and p50, and the median of the per-round
ratios (this tree / base) with their range.

Run ``serve_bench.py --quick`` first: it builds the models, the registry and the requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _timing import load_average, markdown_table
from serve_bench import OUT, Point, measure
from serve_servers import BENCH, install_cleanup, modelport_server, stop_all

# name -> (model, protocol, concurrency)
POINTS = {
    "tiny REST JSON c=1": ("iris", "rest-json", 1),
    "tiny REST JSON c=32": ("iris", "rest-json", 32),
    "tiny gRPC c=32": ("iris", "grpc", 32),
    "CNN REST JSON c=1": ("cnn", "rest-json", 1),
    "CNN REST JSON c=32": ("cnn", "rest-json", 32),
    "CNN REST binary c=32": ("cnn", "rest-binary", 32),
}
SIDES = ("this tree", "base")


def worktree(commit: str, into: Path) -> Path:
    """``commit``'s ``src`` directory, checked out under ``into``."""
    repo = BENCH.parent
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(into), commit],
        check=True,
        capture_output=True,
    )
    return into / "src"


def push_models(home: Path, src: Path) -> None:
    """The benchmark's models, pushed into ``home`` by the code in ``src``."""
    modelport = Path(sys.executable).parent / "modelport"
    env = dict(os.environ, MODELPORT_HOME=str(home), PYTHONPATH=str(src))
    for model in ("iris", "cnn"):
        path = BENCH / "out" / "models" / f"{model}.onnx"
        argv = [str(modelport), "push", str(path), "--name", model, "--alias", "bench"]
        subprocess.run(argv, env=env, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git commit to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--points", default="", help=f"some of: {', '.join(POINTS)}")
    args = parser.parse_args(argv)
    if not (OUT / "requests" / "index.json").is_file():
        print("run bench/serve_bench.py --quick first: it builds models and requests")
        return 2
    index = json.loads((OUT / "requests" / "index.json").read_text())
    points = [p.strip() for p in args.points.split(",")] if args.points else list(POINTS)
    install_cleanup()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    base_commit = subprocess.run(
        ["git", "-C", str(BENCH.parent), "rev-parse", "--short", args.base],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    loads: list[str] = []
    results: list[dict[str, dict[str, Point]]] = []
    with tempfile.TemporaryDirectory(prefix="modelport-ab-") as temp:
        base_src = worktree(args.base, Path(temp) / "base")
        try:
            refs = ["iris@bench", "cnn@bench"]
            # The base gets a registry of its own, made by its own code: this tree may have
            # migrated the shared one to a schema the base refuses to open.
            base_home = Path(temp) / "home"
            push_models(base_home, base_src)
            servers = {
                "this tree": modelport_server(OUT / "home", refs, OUT / "ab-this.log", []),
                "base": modelport_server(base_home, refs, OUT / "ab-base.log", []),
            }
            servers["base"].env["PYTHONPATH"] = str(base_src)
            servers["this tree"].env["PYTHONPATH"] = str(BENCH.parent / "src")
            for server in servers.values():
                server.start(["/v2/health/ready"])
            for name in points:  # warm-up, untimed
                model, protocol, _ = POINTS[name]
                path, header = index[model][protocol]
                for server in servers.values():
                    warm = Point("warm", "", model, protocol, 8)
                    measure(server, warm, (Path(path), header), 1.5)
            for number in range(args.rounds):
                loads.append(load_average())
                print(f"round {number + 1}/{args.rounds} (load {loads[-1]})", flush=True)
                this_round: dict[str, dict[str, Point]] = {}
                for name in points:
                    model, protocol, concurrency = POINTS[name]
                    path, header = index[model][protocol]
                    window = args.duration * (2 if model == "cnn" else 1)
                    measured = {}
                    for side in random.sample(SIDES, len(SIDES)):
                        point = Point(side, "", model, protocol, concurrency)
                        measure(servers[side], point, (Path(path), header), window)
                        measured[side] = point
                    print(
                        f"   {name}: "
                        + ", ".join(
                            f"{k} {v.rps:,.1f} ({v.errors} err)"
                            for k, v in sorted(measured.items())
                        ),
                        flush=True,
                    )
                    this_round[name] = measured
                results.append(this_round)
            loads.append(load_average())
        finally:
            stop_all()
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(BENCH.parent),
                    "worktree",
                    "remove",
                    "--force",
                    str(base_src.parent),
                ],
                check=False,
                capture_output=True,
            )
    text = render(results, started, loads, base_commit)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (OUT / f"ab-{stamp}.md").write_text(text)
    print("\n" + text)
    return 0


def render(
    results: list[dict[str, dict[str, Point]]], started: str, loads: list[str], base: str
) -> str:
    rows = []
    for name in dict.fromkeys(p for r in results for p in r):
        ours = [r[name]["this tree"] for r in results]
        theirs = [r[name]["base"] for r in results]
        pairs = zip(ours, theirs, strict=True)
        ratios = [a.rps / b.rps for a, b in pairs if b.rps and not a.errors]
        errors = sum(p.errors for p in ours + theirs)
        rows.append(
            [
                name,
                f"{statistics.median(p.rps for p in ours):,.1f}",
                f"{statistics.median(p.rps for p in theirs):,.1f}",
                f"{statistics.median(p.p50_ms for p in ours):.2f}",
                f"{statistics.median(p.p50_ms for p in theirs):.2f}",
                f"{statistics.median(ratios):.3f}" if ratios else "-",
                f"{min(ratios):.3f} - {max(ratios):.3f}" if ratios else "-",
                str(errors),
            ]
        )
    table = markdown_table(
        [
            "point",
            "this tree req/s",
            f"{base} req/s",
            "this p50 ms",
            f"{base} p50 ms",
            "ratio (median)",
            "ratio range",
            "errors",
        ],
        rows,
    )
    commit = subprocess.run(
        ["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"A/B run {started}: this tree ({commit} + working changes) vs {base}, "
        f"{len(results)} rounds; load average at each round's start and at the end: "
        f"{' | '.join(loads)}\n\n{table}"
    )


if __name__ == "__main__":
    sys.exit(main())
