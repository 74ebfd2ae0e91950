"""Benchmark: ``modelport ls`` on a registry of 1,000 models with 10 versions each.

Target (registry issue): ``modelport ls --json`` and ``modelport ls NAME --json`` answer in
at most 0.5 s of wall time, start-up included.

The registry is built through the public SDK (``Registry.push``), one tiny ONNX file pushed
``--models`` x ``--versions`` times (content dedup stores it once), each version with a tag
and the last one of each model with the alias ``production``, then checked. Each command is
then run ``--reps`` times, interleaved round by round after ``--warmup`` untimed rounds,
with stdout to /dev/null, next to the interpreter's start-up and in-process timings of the
same queries, so the table shows where the time goes.

    .venv/bin/python bench/ls_many.py [--models 1000] [--versions 10] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import onnx
import orjson
from _timing import (
    SAMPLE_HEADER,
    BenchError,
    Samples,
    cli_argv,
    machine_facts,
    markdown_table,
    run_timed,
    stopwatch,
)
from onnx import TensorProto, helper

from modelport.config import Settings
from modelport.registry import Registry

TARGET_SECONDS = 0.5
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def make_tiny_model(directory: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    directory.mkdir(parents=True)
    path = directory / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def model_name(index: int) -> str:
    return f"model-{index:04d}"


def build(home: Path, model: Path, models: int, versions: int, deadline: float) -> float:
    """Push ``models`` x ``versions`` versions through the SDK; return the seconds taken.

    Raises:
        BenchError: the build ran past ``deadline`` (a ``time.monotonic()`` value).
    """
    total = models * versions
    step = max(total // 10, 1)
    start = time.monotonic()
    done = 0
    with Registry(Settings(home=home)) as registry:
        for index in range(models):
            for number in range(1, versions + 1):
                registry.push(
                    model,
                    model_name(index),
                    aliases=["production"] if number == versions else (),
                    tags={"run": f"r{number}", "team": f"t{index % 7}"},
                    description=f"benchmark model {index}" if number == 1 else "",
                )
                done += 1
                if done % step == 0 or done == total:
                    elapsed = time.monotonic() - start
                    print(
                        f"  pushed {done}/{total} in {elapsed:.1f} s "
                        f"({done / elapsed:.0f} pushes/s)",
                        flush=True,
                    )
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"building the registry took too long: {done}/{total} pushes "
                        f"in {time.monotonic() - start:.0f} s; use --models/--versions "
                        "or raise --build-timeout"
                    )
    return time.monotonic() - start


def check_registry(home: Path, models: int, versions: int) -> None:
    """Check through the SDK and the CLI that the registry holds what was pushed."""
    with Registry(Settings(home=home)) as registry:
        summaries = registry.list_models()
        if len(summaries) != models:
            raise BenchError(f"list_models() gave {len(summaries)} models, expected {models}")
        for summary in summaries:
            if (summary.versions, summary.latest) != (versions, versions) or summary.aliases != {
                "production": versions
            }:
                raise BenchError(f"unexpected summary after the build: {summary}")
        listed = registry.list_versions(model_name(models // 2))
        if [v.version for v in listed] != list(range(1, versions + 1)):
            raise BenchError(f"list_versions() gave versions {[v.version for v in listed]}")
    env = home_env(home)
    shown = orjson.loads(cli_output(["ls", "--json"], env))
    if len(shown) != models:
        raise BenchError(f"modelport ls --json listed {len(shown)} models, expected {models}")
    shown = orjson.loads(cli_output(["ls", model_name(models // 2), "--json"], env))
    if len(shown) != versions:
        raise BenchError(f"modelport ls NAME --json listed {len(shown)} versions")


def cli_output(args: list[str], env: dict[str, str]) -> bytes:
    done = subprocess.run(
        [*cli_argv(), *args], env=env, capture_output=True, check=False, timeout=300
    )
    if done.returncode != 0:
        raise BenchError(f"modelport {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
    return done.stdout


def home_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "MODELPORT_HOME": str(home)}
    env.pop("MODELPORT_DB_URL", None)  # the registry must be the one in ``home``
    return env


def import_profile(top: int = 10) -> list[list[str]]:
    """``python -X importtime``: the packages that cost the CLI's start-up most.

    Each package is charged the cumulative time of its first (outermost) import.
    """
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import modelport.cli.main"],
        capture_output=True,
        text=True,
        check=True,
    )
    charged: dict[str, int] = defaultdict(int)
    total = 0
    # Lines come innermost first; remember which packages an outer import already covers.
    entries = []
    for line in done.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            entries.append((len(match[3]), match[4], int(match[2])))
    covering: list[tuple[int, str]] = []
    for depth, name, cumulative in reversed(entries):
        while covering and covering[-1][0] >= depth:
            covering.pop()
        package = name.split(".")[0]
        if depth == 1:
            total += cumulative
        if all(outer != package for _, outer in covering):
            charged[package] += cumulative
        covering.append((depth, package))
    rows = sorted(charged.items(), key=lambda item: -item[1])[:top]
    return [[package, f"{micros / 1000:.0f}"] for package, micros in rows] + [
        ["(all imports)", f"{total / 1000:.0f}"]
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="models (1000)")
    parser.add_argument("--versions", type=int, default=10, help="versions per model (10)")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    parser.add_argument(
        "--build-timeout", type=float, default=900.0, help="give up building after (900 s)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per command, seconds")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: the temp dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelport-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        for key, value in machine_facts(work):
            print(f"{key}: {value}")
        tiny = make_tiny_model(work / "source")
        home, empty = work / "home", work / "empty-home"
        Registry(Settings(home=empty)).close()
        total = args.models * args.versions
        print(f"building {args.models} models x {args.versions} versions through the SDK")
        took = build(home, tiny, args.models, args.versions, time.monotonic() + args.build_timeout)
        check_registry(home, args.models, args.versions)
        db_size = (home / "registry.db").stat().st_size / 2**20
        print(
            f"built and checked: {total} pushes in {took:.1f} s "
            f"({took / total * 1000:.1f} ms/push); registry.db {db_size:.1f} MiB"
        )

        name = model_name(args.models // 2)
        cli = cli_argv()
        commands = [
            (Samples("python -c 'import modelport.cli.main'"), None, []),
            (Samples("modelport ls --json (empty registry)"), empty, ["ls", "--json"]),
            (Samples(f"modelport ls --json ({args.models} models)"), home, ["ls", "--json"]),
            (Samples(f"modelport ls {name} --json"), home, ["ls", name, "--json"]),
            (Samples(f"modelport ls ({args.models} models, table)"), home, ["ls"]),
        ]
        sdk_open = Samples("SDK Registry(...) open")
        sdk_list = Samples("SDK list_models() + to_dict + orjson")
        sdk_versions = Samples(f"SDK list_versions({name!r}) + to_dict + orjson")
        for round_number in range(args.warmup + args.reps):
            record = round_number >= args.warmup
            for samples, where, cli_args in commands:
                if where is None:
                    argv = [sys.executable, "-c", "import modelport.cli.main"]
                    env = None
                else:
                    argv, env = [*cli, *cli_args], home_env(where)
                wall, rss = run_timed(argv, env=env, timeout=args.timeout)
                if record:
                    samples.add(wall, rss)
            scratch = [Samples(""), Samples(""), Samples("")]
            with stopwatch(scratch[0]):
                registry = Registry(Settings(home=home))
            with stopwatch(scratch[1]):
                orjson.dumps([m.to_dict() for m in registry.list_models()])
            with stopwatch(scratch[2]):
                orjson.dumps([v.to_dict() for v in registry.list_versions(name)])
            registry.close()
            if record:
                for target, taken in zip((sdk_open, sdk_list, sdk_versions), scratch, strict=True):
                    target.add(taken.seconds[0])
            print(f"round {round_number + 1}/{args.warmup + args.reps} done", flush=True)

        print()
        rows = [s.row() for s, _, _ in commands] + [
            s.row() for s in (sdk_open, sdk_list, sdk_versions)
        ]
        print(markdown_table(SAMPLE_HEADER, rows))
        startup = commands[0][0].median
        print(f"\ntarget: <= {TARGET_SECONDS} s wall (median)\n")
        verdicts = []
        for samples, _, _ in commands[2:4]:
            met = "met" if samples.median <= TARGET_SECONDS else "MISSED"
            share = startup / samples.median
            verdicts.append([samples.label, f"{samples.median:.3f}", met, f"{share:.0%}"])
        print(markdown_table(["command", "median s", "target", "import share"], verdicts))
        print("\nstart-up by package (python -X importtime, one run, ms):\n")
        print(markdown_table(["package", "ms"], import_profile()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
