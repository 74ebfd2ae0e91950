"""Benchmark: ``modelport ls`` on a registry of 1,000 models with 10 versions each.

Target (registry issue): ``modelport ls --json`` and ``modelport ls NAME --json`` answer in
at most 0.5 s of wall time, start-up included.

The registry is built through the public SDK (``Registry.push``): one tiny ONNX file pushed
``--models`` x ``--versions`` times (content dedup stores it once), every version with two
tags, the first with a description, the last with the alias ``production``; then it is
checked through the SDK and the CLI. Each command then runs ``--reps`` times, interleaved
round by round after ``--warmup`` untimed rounds, with stdout to /dev/null, next to the
interpreter's start-up and in-process timings of the same queries, so the table shows where
the time goes. The measuring process imports neither onnx nor modelport (building and the
in-process timings run in worker children), so each peak RSS is the child's own.

    .venv/bin/python bench/ls_many.py [--models 1000] [--versions 10] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _timing import (
    SAMPLE_HEADER,
    BenchError,
    Samples,
    cli_argv,
    load_average,
    machine_facts,
    markdown_table,
    run_timed,
)

TARGET_SECONDS = 0.5
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$")


def model_name(index: int) -> str:
    return f"model-{index:04d}"


# -- workers: run in child processes, print one JSON document ---------------------------


def build(home: Path, models: int, versions: int, timeout: float) -> dict[str, Any]:
    """Push ``models`` x ``versions`` versions of a tiny model through the SDK, then check.

    Raises:
        BenchError: the build ran past ``timeout`` seconds, or the registry does not hold
            what was pushed.
    """
    import onnx
    from onnx import TensorProto, helper

    from modelport.config import Settings
    from modelport.registry import Registry

    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [tensor("x", TensorProto.FLOAT, ["batch", 4])],
        [tensor("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = home.parent / "source" / "tiny.onnx"
    model.parent.mkdir(parents=True)
    opsets = [helper.make_opsetid("", 17)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(model))

    total = models * versions
    report_every = max(total // 10, 1)
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
                elapsed = time.monotonic() - start
                if done % report_every == 0 or done == total:
                    print(
                        f"  pushed {done}/{total} in {elapsed:.1f} s ({done / elapsed:.0f}/s)",
                        file=sys.stderr,
                        flush=True,
                    )
                if elapsed > timeout:
                    raise BenchError(
                        f"building took too long: {done}/{total} pushes in {elapsed:.0f} s; "
                        "lower --models/--versions or raise --build-timeout"
                    )
        took = time.monotonic() - start
        summaries = registry.list_models()
        if len(summaries) != models:
            raise BenchError(f"list_models() gave {len(summaries)} models, expected {models}")
        for summary in summaries:
            expected = (versions, versions, {"production": versions})
            if (summary.versions, summary.latest, summary.aliases) != expected:
                raise BenchError(f"unexpected summary after the build: {summary}")
        listed = registry.list_versions(model_name(models // 2))
        if [v.version for v in listed] != list(range(1, versions + 1)):
            raise BenchError(f"list_versions() gave versions {[v.version for v in listed]}")
        if listed[-1].tags != {"run": f"r{versions}", "team": f"t{(models // 2) % 7}"}:
            raise BenchError(f"unexpected tags {listed[-1].tags}")
    return {"seconds": took, "pushes": total}


def sdk_ls(home: Path, name: str) -> dict[str, float]:
    """The queries behind ``ls --json`` and ``ls NAME --json``, timed in-process."""
    import orjson

    from modelport.config import Settings
    from modelport.registry import Registry

    start = time.perf_counter()
    registry = Registry(Settings(home=home))
    opened = time.perf_counter()
    models = registry.list_models()
    listed = time.perf_counter()
    orjson.dumps([m.to_dict() for m in models], option=orjson.OPT_INDENT_2)
    dumped = time.perf_counter()
    versions = registry.list_versions(name)
    orjson.dumps([v.to_dict() for v in versions], option=orjson.OPT_INDENT_2)
    versions_done = time.perf_counter()
    registry.close()
    return {
        "open": opened - start,
        "list_models": listed - opened,
        "to_json": dumped - listed,
        "list_versions": versions_done - dumped,
    }


def worker(args: argparse.Namespace) -> int:
    home = Path(args.paths[0])
    if args.worker == "build":
        result: Any = build(home, args.models, args.versions, args.build_timeout)
    else:
        result = sdk_ls(home, args.paths[1])
    sys.stdout.write(json.dumps(result))
    return 0


# -- the measuring process --------------------------------------------------------------


def worker_argv(kind: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args]


def home_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "MODELPORT_HOME": str(home)}
    env.pop("MODELPORT_DB_URL", None)  # the registry must be the one in ``home``
    return env


def check_cli(home: Path, models: int, versions: int, name: str, timeout: float) -> None:
    """What ``modelport ls --json`` prints matches what was pushed."""
    env = home_env(home)
    every = run_timed([*cli_argv(), "ls", "--json"], env=env, timeout=timeout, capture=True)
    everything = json.loads(every.stdout)
    if len(everything) != models or any(m["versions"] != versions for m in everything):
        raise BenchError(f"modelport ls --json listed {len(everything)} models, not {models}")
    one = run_timed([*cli_argv(), "ls", name, "--json"], env=env, timeout=timeout, capture=True)
    if [v["version"] for v in json.loads(one.stdout)] != list(range(1, versions + 1)):
        raise BenchError(f"modelport ls {name} --json did not list versions 1..{versions}")


def import_profile(top: int = 12) -> list[list[str]]:
    """``python -X importtime``: the CLI's start-up split by package, by each module's own
    (self) time, so the rows add up to the total."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import modelport.cli.main"],
        capture_output=True,
        text=True,
        check=True,
    )
    own: dict[str, int] = defaultdict(int)
    modules: dict[str, int] = defaultdict(int)
    for line in done.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            package = match[4].split(".")[0]
            own[package] += int(match[1])
            modules[package] += 1
    total = sum(own.values())
    rows = sorted(own.items(), key=lambda item: -item[1])
    shown = [
        [package, str(modules[package]), f"{micros / 1000:.0f}", f"{micros / total:.0%}"]
        for package, micros in rows[:top]
    ]
    rest = sum(micros for _, micros in rows[top:])
    rest_modules = sum(modules[package] for package, _ in rows[top:])
    return [
        *shown,
        [
            f"({len(rows) - top} others)",
            str(rest_modules),
            f"{rest / 1000:.0f}",
            f"{rest / total:.0%}",
        ],
        ["(all imports)", str(sum(modules.values())), f"{total / 1000:.0f}", "100%"],
    ]


def measure(args: argparse.Namespace, home: Path, empty: Path, name: str) -> list[Samples]:
    cli = cli_argv()
    commands: list[tuple[Samples, Path | None, list[str]]] = [
        (Samples("python -c 'import modelport.cli.main'"), None, []),
        (Samples("python -c pass  (bare interpreter)"), None, ["pass"]),
        (Samples("modelport ls --json  (empty registry)"), empty, ["ls", "--json"]),
        (Samples(f"modelport ls --json  ({args.models} models)"), home, ["ls", "--json"]),
        (Samples(f"modelport ls {name} --json"), home, ["ls", name, "--json"]),
        (Samples(f"modelport ls  ({args.models} models, rich table)"), home, ["ls"]),
    ]
    in_process = {
        "open": Samples("SDK Registry(...) open"),
        "list_models": Samples("SDK list_models()"),
        "to_json": Samples("  ... to_dict() + orjson for ls --json"),
        "list_versions": Samples(f"SDK list_versions({name!r}) + to_dict + orjson"),
    }
    rounds = args.warmup + args.reps
    for round_number in range(rounds):
        record = round_number >= args.warmup
        for samples, where, cli_args in commands:
            if where is None:
                code = cli_args[0] if cli_args else "import modelport.cli.main"
                argv, env = [sys.executable, "-c", code], None
            else:
                argv, env = [*cli, *cli_args], home_env(where)
            done = run_timed(argv, env=env, timeout=args.timeout)
            if record:
                samples.add(done.seconds, done.peak_rss)
        done = run_timed(worker_argv("sdk-ls", str(home), name), capture=True)
        if record:
            for key, seconds in json.loads(done.stdout).items():
                in_process[key].add(seconds)
        print(f"round {round_number + 1}/{rounds} done", flush=True)
    return [s for s, _, _ in commands] + list(in_process.values())


def report(samples: list[Samples]) -> None:
    print()
    print(markdown_table(SAMPLE_HEADER, [s.row() for s in samples]))
    startup = samples[0].median
    print(f"\ntarget: <= {TARGET_SECONDS} s wall (median)\n")
    rows = []
    for measured in samples[3:5]:
        met = "met" if measured.median <= TARGET_SECONDS else "MISSED"
        rest = measured.median - startup
        rows.append(
            [measured.label, f"{measured.median:.3f}", met, f"{startup:.3f}", f"{rest:.3f}"]
        )
    header = ["command", "median s", "target", "import start-up s", "the rest s"]
    print(markdown_table(header, rows))
    print("\nstart-up by package (python -X importtime, self time, one run):\n")
    print(markdown_table(["package", "modules", "ms", "share"], import_profile()))


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
    parser.add_argument("--worker", choices=["build", "sdk-ls"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory(prefix="modelport-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        for key, value in machine_facts(work):
            print(f"{key}: {value}")
        home, empty = work / "home", work / "empty-home"
        run_timed([*cli_argv(), "ls", "--json"], env=home_env(empty), timeout=args.timeout)
        total = args.models * args.versions
        print(f"building {args.models} models x {args.versions} versions through the SDK")
        build_argv = worker_argv(
            "build",
            str(home),
            f"--models={args.models}",
            f"--versions={args.versions}",
            f"--build-timeout={args.build_timeout}",
        )
        # The build reports progress on stderr; let it through to the terminal.
        built = subprocess.run(
            build_argv, stdout=subprocess.PIPE, check=False, timeout=args.build_timeout + 120
        )
        if built.returncode != 0:
            raise BenchError(f"building the registry failed (exit {built.returncode})")
        took = json.loads(built.stdout)["seconds"]
        name = model_name(args.models // 2)
        check_cli(home, args.models, args.versions, name, args.timeout)
        db_size = (home / "registry.db").stat().st_size / 2**20
        print(
            f"built and checked: {total} pushes in {took:.1f} s "
            f"({took / total * 1000:.1f} ms/push); registry.db {db_size:.1f} MiB",
            flush=True,
        )
        report(measure(args, home, empty, name))
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    if "--worker" not in sys.argv:
        print(f"\nbenchmark took {time.monotonic() - started:.0f} s; load average {load_average()}")
    sys.exit(code)
