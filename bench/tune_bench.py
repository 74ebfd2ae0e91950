"""``modelport tune``: the chosen settings against the defaults and the best point of its grid.

    .venv/bin/python bench/tune_bench.py MODEL.onnx [--name NAME] [--concurrency 1,8,32]
        [--duration 3] [--rounds 3] [--latency-p99-ms MS]

Pushes the model into a fresh registry, runs ``modelport.tune`` over its whole grid (one
``modelport serve`` per point), then measures three points again, interleaved, over
``--rounds`` rounds: the defaults, the point tune chose, and the point with the highest
throughput in tune's own pass (they may coincide). A single pass per point is what tune
affords; the interleaved re-run says whether its choice holds (target: within 10% of the
best, never below the defaults). Prints a markdown table and the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _timing import load_average, markdown_table

from modelport import Registry, Settings
from modelport.tuning import tune
from modelport.tuning.inputs import sample_requests
from modelport.tuning.load import drive
from modelport.tuning.server import serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--name", default="model")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-p99-ms", type=float, default=None)
    args = parser.parse_args()
    levels = tuple(int(c) for c in args.concurrency.split(","))
    print(f"load average before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as scratch:
        os.environ["MODELPORT_HOME"] = str(Path(scratch) / "home")
        with Registry(Settings(home=Path(scratch) / "home", db_url=None)) as registry:
            record = registry.push(args.model, name=args.name)
            result = tune(
                record.ref, concurrency=levels, latency_p99_ms=args.latency_p99_ms,
                duration=args.duration, registry=registry, progress=print,
            )  # fmt: skip
            if result.chosen is None:
                print("no point met the budget; nothing to compare")
                return
            best = result.best or result.chosen
            contenders = {"defaults": result.default.settings, "chosen": result.chosen.settings}
            contenders["grid best"] = best.settings
            print(f"tune's pass: defaults {result.default.throughput:.1f}/s, chosen "
                  f"{result.chosen.throughput:.1f}/s, best {best.throughput:.1f}/s at "
                  f"c={levels[-1]}")  # fmt: skip
            requests = sample_requests(record.signature)
            rerun = _rerun(registry, record.ref, args.name, contenders, requests, levels, args)
    _report(rerun, levels, contenders)
    print(f"load average after: {load_average()}")


def _rerun(
    registry: Registry,
    ref: str,
    name: str,
    contenders: dict[str, dict[str, Any]],
    requests: list[Any],
    levels: tuple[int, ...],
    args: argparse.Namespace,
) -> dict[tuple[str, int], list[float]]:
    measured: dict[tuple[str, int], list[float]] = {}
    unique = {}
    for label, settings in contenders.items():
        unique.setdefault(repr(sorted(settings.items())), []).append(label)
    for round_index in range(args.rounds):
        for labels in unique.values():
            settings = contenders[labels[0]]
            with serving(registry.settings, ref, name, settings) as url:
                for level in levels:
                    throughput = drive(url, name, requests, level, args.duration).throughput
                    for label in labels:
                        measured.setdefault((label, level), []).append(throughput)
        print(f"round {round_index + 1} done (load average {load_average()})", flush=True)
    return measured


def _report(
    measured: dict[tuple[str, int], list[float]],
    levels: tuple[int, ...],
    contenders: dict[str, dict[str, Any]],
) -> None:
    rows = []
    for label, settings in contenders.items():
        text = " ".join(f"{k}={v}" for k, v in settings.items())
        cells = [f"{statistics.median(measured[(label, c)]):.1f}" for c in levels]
        rows.append([label, text, *cells])
    print(markdown_table(["point", "settings", *(f"c={c} req/s" for c in levels)], rows))
    top = levels[-1]
    for other in ("defaults", "grid best"):
        ratios = [
            a / b
            for a, b in zip(measured[("chosen", top)], measured[(other, top)], strict=True)
            if b
        ]
        print(f"chosen / {other} at c={top}: median {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}] over {len(ratios)} rounds")  # fmt: skip


if __name__ == "__main__":
    main()
