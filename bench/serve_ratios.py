"""The serving targets' ratios, measured interleaved so that a busy machine skews both sides alike.

    .venv/bin/python bench/serve_ratios.py [--rounds 3] [--duration 5]

``serve_bench.py`` measures each server in turn, minutes apart; on a machine that other work
shares, load drifts between them and a ratio of two such numbers says little. Here every
contender of a target is up at once (idle servers cost nothing) and each round measures
them back to back in a shuffled order, with the in-process limit measured inside the round
too. Reports each contender's median requests/s over the rounds, and each target's ratio as
the median of its per-round ratios (numbers measured seconds apart) with their range.

Run ``serve_bench.py`` (even ``--quick``) first: it builds the models, the registry and the
request files used here.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _timing import load_average, markdown_table
from serve_bench import OUT, Point, measure
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

MLSERVER_DEFAULT = "MLServer (parallel_workers=1, default)"
MLSERVER_BATCHING = "MLServer (parallel_workers=1, batching 32/5 ms)"
MLSERVER_INLINE = "MLServer (parallel_workers=0)"
MODELPORT = "modelport (defaults)"
MODELPORT_STREAMS = "modelport (--instances 2 --threads 1)"
MODELPORT_UNBATCHED = "modelport (--instances 2 --threads 1 --max-batch-size 0)"
MODELPORT_WORKERS = "modelport (--workers 2)"
STARLETTE = "Starlette (bare)"
STARLETTE_WORKERS = "Starlette (bare, 2 workers)"
LIMIT = "in-process limit"

# point name -> (model, protocol, contenders); every point at concurrency 32.
POINTS = {
    "tiny REST JSON": (
        "iris",
        "rest-json",
        [MODELPORT, MODELPORT_WORKERS, STARLETTE, STARLETTE_WORKERS, MLSERVER_DEFAULT,
         MLSERVER_INLINE],
    ),
    "CNN REST binary": (
        "cnn", "rest-binary",
        [MODELPORT, MODELPORT_STREAMS, MODELPORT_UNBATCHED, MODELPORT_WORKERS, LIMIT],
    ),
    "CNN gRPC": (
        "cnn", "grpc", [MODELPORT, MODELPORT_STREAMS, MODELPORT_UNBATCHED, MODELPORT_WORKERS, LIMIT]
    ),
    "CNN REST JSON": (
        "cnn",
        "rest-json",
        [MODELPORT, MODELPORT_STREAMS, MODELPORT_UNBATCHED, MODELPORT_WORKERS, STARLETTE,
         MLSERVER_DEFAULT, MLSERVER_BATCHING, MLSERVER_INLINE],
    ),
}  # fmt: skip

# (target, point, ours, theirs, at least); "MLServer best" is the best MLServer of the round.
TARGETS = [
    ("(--workers 2) tiny REST JSON >= 5x MLServer (best)", "tiny REST JSON", MODELPORT_WORKERS,
     "MLServer best", 5.0),
    ("(--workers 2) tiny REST JSON >= 0.8x bare Starlette", "tiny REST JSON", MODELPORT_WORKERS,
     STARLETTE, 0.8),
    ("(--workers 2) tiny REST JSON >= 0.8x bare Starlette, 2 workers", "tiny REST JSON",
     MODELPORT_WORKERS, STARLETTE_WORKERS, 0.8),
    ("(--workers 2) CNN REST JSON >= 1.3x MLServer (best)", "CNN REST JSON", MODELPORT_WORKERS,
     "MLServer best", 1.3),
    ("(--workers 2) CNN REST binary >= 0.9x limit", "CNN REST binary", MODELPORT_WORKERS, LIMIT,
     0.9),
    ("(--workers 2) CNN gRPC >= 0.9x limit", "CNN gRPC", MODELPORT_WORKERS, LIMIT, 0.9),
    ("tiny REST JSON >= 5x MLServer (best)", "tiny REST JSON", MODELPORT, "MLServer best", 5.0),
    ("tiny REST JSON >= 5x MLServer (default)", "tiny REST JSON", MODELPORT, MLSERVER_DEFAULT, 5.0),
    ("tiny REST JSON >= 0.8x bare Starlette", "tiny REST JSON", MODELPORT, STARLETTE, 0.8),
    ("CNN REST binary >= 0.9x limit", "CNN REST binary", MODELPORT, LIMIT, 0.9),
    ("CNN gRPC >= 0.9x limit", "CNN gRPC", MODELPORT, LIMIT, 0.9),
    ("CNN REST JSON >= 1.3x MLServer (best)", "CNN REST JSON", MODELPORT, "MLServer best", 1.3),
    ("(--instances 2 --threads 1) CNN REST binary", "CNN REST binary", MODELPORT_STREAMS, LIMIT,
     0.9),
    ("(--instances 2 --threads 1) CNN gRPC", "CNN gRPC", MODELPORT_STREAMS, LIMIT, 0.9),
    ("(--instances 2 --threads 1) CNN REST JSON", "CNN REST JSON", MODELPORT_STREAMS,
     "MLServer best", 1.3),
    ("(2 x 1 thread, batching off) CNN REST binary", "CNN REST binary", MODELPORT_UNBATCHED,
     LIMIT, 0.9),
    ("(2 x 1 thread, batching off) CNN gRPC", "CNN gRPC", MODELPORT_UNBATCHED, LIMIT, 0.9),
    ("(2 x 1 thread, batching off) CNN REST JSON", "CNN REST JSON", MODELPORT_UNBATCHED,
     "MLServer best", 1.3),
]  # fmt: skip


def start_servers(home: Path, models: dict[str, Path]) -> dict[tuple[str, str], Server]:
    """Every contender, started; keyed by (contender, model)."""
    servers: dict[tuple[str, str], Server] = {}
    ready = ["/v2/health/ready"]
    refs = [f"{m}@bench" for m in models]
    streams = ["--instances", "2", "--threads", "1"]
    variants = [(MODELPORT, []), (MODELPORT_STREAMS, streams)]
    variants.append((MODELPORT_UNBATCHED, [*streams, "--max-batch-size", "0"]))
    variants.append((MODELPORT_WORKERS, ["--workers", "2"]))
    for name, extra in variants:
        server = modelport_server(home, refs, OUT / f"ratios-{len(servers)}.log", extra)
        server.start(ready)
        for model in models:
            servers[name, model] = server
    for model, path in models.items():
        server = starlette_server(path, OUT / f"ratios-starlette-{model}.log")
        server.start(ready)
        servers[STARLETTE, model] = server
    iris = models["iris"]
    server = starlette_server(iris, OUT / "ratios-starlette-iris-2.log", workers=2)
    server.start(ready)
    servers[STARLETTE_WORKERS, "iris"] = server
    python, versions = ensure_mlserver(
        BENCH / "out" / "venv-mlserver", OUT / "mlserver-install.log"
    )
    if python is None:
        print(f"MLServer not run: {versions}")
        return servers
    for index, (name, workers, batching) in enumerate(
        (
            (MLSERVER_DEFAULT, None, False),
            (MLSERVER_BATCHING, None, True),
            (MLSERVER_INLINE, 0, False),
        )
    ):
        root = OUT / f"ratios-mlserver-{index}"
        server = mlserver_server(
            python, root, models, workers=workers, batching=batching, log=root.with_suffix(".log")
        )
        server.start([f"/v2/models/{m}/ready" for m in models])
        for model in models:
            servers[name, model] = server
    return servers


def limit(model: Path, seconds: float) -> float:
    argv = [
        sys.executable, str(BENCH / "serve_models.py"), "limit", str(model),
        "--seconds", str(seconds), "--batches", "16",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
    return float(json.loads(done.stdout)["best"])


def run_rounds(
    servers: dict[tuple[str, str], Server],
    models: dict[str, Path],
    rounds: int,
    seconds: float,
    loads: list[str],
    points: list[str],
) -> list[dict[str, dict[str, float]]]:
    """Per round, per point, requests/s of each contender; ``loads`` gets each round's load."""
    index = json.loads((OUT / "requests" / "index.json").read_text())
    results = []
    for number in range(rounds):
        loads.append(load_average())
        print(f"round {number + 1}/{rounds} (load {loads[-1]})", flush=True)
        this_round: dict[str, dict[str, float]] = {}
        for point in points:
            model, protocol, contenders = POINTS[point]
            path, header = index[model][protocol]
            # At c=32 a CNN request waits ~1-2 s: a window must hold many of them.
            window = seconds * 2 if model == "cnn" else seconds
            order = list(contenders)
            random.shuffle(order)
            measured: dict[str, float] = {}
            for contender in order:
                if contender == LIMIT:
                    measured[contender] = limit(models[model], window / 4)
                elif (contender, model) in servers:
                    server = servers[contender, model]
                    load = Point(contender, "", model, protocol, 32)
                    measure(server, load, (Path(path), header), window)
                    measured[contender] = load.rps if not load.errors else 0.0
            print(f"   {point}: " + ", ".join(f"{k} {v:,.1f}" for k, v in measured.items()))
            best = [v for k, v in measured.items() if k.startswith("MLServer")]
            if best:
                measured["MLServer best"] = max(best)
            this_round[point] = measured
        results.append(this_round)
    return results


def warm(servers: dict[tuple[str, str], Server]) -> None:
    index = json.loads((OUT / "requests" / "index.json").read_text())
    for (contender, model), server in servers.items():
        for point, (p_model, protocol, contenders) in POINTS.items():
            if p_model == model and contender in contenders:
                path, header = index[model][protocol]
                measure(server, Point(point, "", model, protocol, 8), (Path(path), header), 1.5)


def render(results: list[dict[str, dict[str, float]]], started: str, loads: list[str]) -> str:
    rows = []
    for point in dict.fromkeys(p for r in results for p in r):
        names = dict.fromkeys(k for r in results for k in r[point])
        for name in names:
            values = [r[point][name] for r in results if name in r[point]]
            spread = f"{min(values):,.1f} - {max(values):,.1f}"
            rows.append([point, name, f"{statistics.median(values):,.1f}", spread])
    contenders = markdown_table(["point (c=32)", "who", "median req/s", "range"], rows)
    rows = []
    for what, point, ours, theirs, floor in TARGETS:
        ratios = [
            r[point][ours] / r[point][theirs]
            for r in results
            if point in r and r[point].get(ours) and r[point].get(theirs)
        ]
        if not ratios:
            rows.append([what, "-", "-", "not measured"])
            continue
        median = statistics.median(ratios)
        verdict = "hit" if median >= floor else "MISS"
        rows.append([what, f"{median:.2f}", f"{min(ratios):.2f} - {max(ratios):.2f}", verdict])
    targets = markdown_table(["target", "median ratio", "range over rounds", ""], rows)
    return (
        f"Interleaved run {started}, {len(results)} rounds; load average (1/5/15 min) at each "
        f"round's start and at the end: {' | '.join(loads)}\n\n{contenders}\n\n{targets}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement (CNN: twice)"
    )
    parser.add_argument("--points", default="", help=f"some of: {', '.join(POINTS)}")
    args = parser.parse_args(argv)
    if not (OUT / "requests" / "index.json").is_file():
        print("run bench/serve_bench.py --quick first: it builds models and requests")
        return 2
    install_cleanup()
    models = {m: BENCH / "out" / "models" / f"{m}.onnx" for m in ("iris", "cnn")}
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    loads = []
    try:
        servers = start_servers(OUT / "home", models)
        warm(servers)
        points = [p.strip() for p in args.points.split(",")] if args.points else list(POINTS)
        results = run_rounds(servers, models, args.rounds, args.duration, loads, points)
        loads.append(load_average())
    finally:
        stop_all()
    text = render(results, started, loads)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (OUT / f"ratios-{stamp}.json").write_text(json.dumps(results, indent=1))
    (OUT / f"ratios-{stamp}.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
