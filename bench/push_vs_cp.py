"""Benchmark: pushing a large ONNX model into the registry against copying it with ``cp``.

Target (registry issue): ``modelport push`` of a ~200 MB model takes at most 1.5x the wall
time of ``cp``. The push validates the model, hashes every byte and fsyncs what it stores,
so it is set against both plain ``cp`` and ``cp`` followed by ``sync FILE``.

Every step runs ``--reps`` times, interleaved round by round (after ``--warmup`` untimed
rounds), with the source file in the page cache, destinations on the same filesystem as
the registry home, and a full ``sync`` (untimed) before each step so that no step pays for
another's dirty pages. A breakdown of the push's stages, timed in-process with the same
functions the push calls, follows.

    .venv/bin/python bench/push_vs_cp.py [--size-mb 200] [--reps 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
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
from onnx import TensorProto, helper, numpy_helper

from modelport.config import Settings
from modelport.registry import Registry

TARGET_RATIO = 1.5
# protobuf refuses to serialise a message of 2 GiB or more; leave headroom for the graph.
SINGLE_FILE_LIMIT_MB = 1900


def make_model(directory: Path, size_mb: int, *, external: bool) -> list[Path]:
    """Write a valid model, Y = X + W, whose FP32 initializer W fills ``size_mb`` MiB.

    Returns the files written, the ``.onnx`` file first.
    """
    count = size_mb * 2**20 // 4
    weights = np.random.default_rng(0).standard_normal(count, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "big",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [count])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [count])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    del weights
    directory.mkdir(parents=True)
    path = directory / "model.onnx"
    if not external:
        onnx.save(model, str(path))
        return [path]
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
    return [path, directory / "model.onnx.data"]


def make_tiny_model(directory: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    directory.mkdir(parents=True)
    path = directory / "tiny.onnx"
    onnx.save(model, str(path))
    return path


class Bench:
    """The steps of one run. Each step makes what it needs under ``self.scratch`` and
    removes it afterwards, so a run holds at most a couple of model copies on disk."""

    def __init__(self, work: Path, files: list[Path], tiny: Path, timeout: float) -> None:
        self.work = work
        self.files = files
        self.model = files[0]
        self.tiny = tiny
        self.timeout = timeout
        self.counter = 0
        self.cp = Samples("cp MODEL DEST/")
        self.cp_sync = Samples("cp MODEL DEST/ && sync DEST/FILE")
        self.startup = Samples("python -c 'import modelport.cli.main'")
        self.cli = Samples("modelport push MODEL --name big (registry exists)")
        self.cli_empty = Samples("modelport push MODEL --name big (empty home: creates DB)")
        self.sdk = Samples("SDK Registry(...) open + push() + close()")
        self.sdk_push = Samples("SDK push() alone")
        self.sdk_open = Samples("SDK Registry(...) open (DB exists)")

    # -- helpers -------------------------------------------------------------------------

    def fresh(self, prefix: str) -> Path:
        """A new, empty directory; the previous step's leftovers are gone and synced."""
        self.counter += 1
        path = self.work / f"{prefix}-{self.counter}"
        path.mkdir()
        os.sync()
        return path

    def fresh_home(self) -> Path:
        """A new MODELPORT_HOME whose database already exists (made untimed)."""
        home = self.fresh("home")
        Registry(Settings(home=home)).close()
        os.sync()
        return home

    def env(self, home: Path) -> dict[str, str]:
        env = {**os.environ, "MODELPORT_HOME": str(home)}
        env.pop("MODELPORT_DB_URL", None)  # the registry must live in the fresh home
        return env

    # -- steps ---------------------------------------------------------------------------

    def step_cp(self, record: bool) -> None:
        dest = self.fresh("cp")
        wall, _ = run_timed(["cp", *map(str, self.files), f"{dest}/"], timeout=self.timeout)
        if record:
            self.cp.add(wall)
        shutil.rmtree(dest)

    def step_cp_sync(self, record: bool) -> None:
        dest = self.fresh("cp-sync")
        copied = [str(dest / f.name) for f in self.files]
        wall, _ = run_timed(["cp", *map(str, self.files), f"{dest}/"], timeout=self.timeout)
        synced, _ = run_timed(["sync", *copied], timeout=self.timeout)
        if record:
            self.cp_sync.add(wall + synced)
        shutil.rmtree(dest)

    def step_startup(self, record: bool) -> None:
        os.sync()
        wall, rss = run_timed(
            [sys.executable, "-c", "import modelport.cli.main"], timeout=self.timeout
        )
        if record:
            self.startup.add(wall, rss)

    def step_cli(self, record: bool) -> None:
        home = self.fresh_home()
        argv = [*cli_argv(), "push", str(self.model), "--name", "big"]
        wall, rss = run_timed(argv, env=self.env(home), timeout=self.timeout)
        if record:
            self.cli.add(wall, rss)
        shutil.rmtree(home)

    def step_cli_empty(self, record: bool) -> None:
        home = self.fresh("empty-home")
        argv = [*cli_argv(), "push", str(self.model), "--name", "big"]
        wall, rss = run_timed(argv, env=self.env(home), timeout=self.timeout)
        if record:
            self.cli_empty.add(wall, rss)
        shutil.rmtree(home)

    def step_sdk(self, record: bool) -> None:
        home = self.fresh_home()
        start = time.perf_counter()
        registry = Registry(Settings(home=home))
        opened = time.perf_counter()
        version = registry.push(self.model, "big")
        pushed = time.perf_counter()
        registry.close()
        closed = time.perf_counter()
        if version.size != sum(f.stat().st_size for f in self.files):
            raise BenchError(f"pushed {version.size} bytes, expected the model's size")
        if record:
            self.sdk.add(closed - start)
            self.sdk_open.add(opened - start)
            self.sdk_push.add(pushed - opened)
        shutil.rmtree(home)

    def steps(self) -> list[Callable[[bool], None]]:
        return [
            self.step_cp,
            self.step_cp_sync,
            self.step_startup,
            self.step_cli,
            self.step_cli_empty,
            self.step_sdk,
        ]

    def samples(self) -> list[Samples]:
        return [
            self.cp,
            self.cp_sync,
            self.startup,
            self.cli,
            self.cli_empty,
            self.sdk,
            self.sdk_open,
            self.sdk_push,
        ]


def breakdown(bench: Bench, reps: int) -> list[Samples]:
    """Time the push's stages one by one, in-process, with the functions the push calls."""
    from modelport.registry.store import LocalStore, hash_file
    from modelport.runtimes.onnx_inspection import inspect_model, read_model

    parse = Samples("onnx.load(load_external_data=False)  [read_model]")
    check = Samples("onnx.checker.check_model(proto)")
    inspect = Samples("runtime.inspect() total  [parse + check + signature]")
    sha = Samples("sha256 of the file alone  [hash_file]")
    copy_fsync = Samples("4 MiB read/write loop + fsync, no hash")
    sendfile = Samples("shutil.copyfile (sendfile) + fsync")
    staged = Samples("staging.add()  [copy + sha256 + fsync, as push]")
    tiny = Samples("SDK push() of a tiny model  [fixed cost: DB, get()]")
    home = bench.fresh_home()
    registry = Registry(Settings(home=home))
    model = bench.model
    for _ in range(reps):
        os.sync()
        with stopwatch(parse):
            proto = read_model(model)
        with stopwatch(check):
            onnx.checker.check_model(str(model) if len(bench.files) > 1 else proto)
        del proto
        os.sync()
        with stopwatch(inspect):
            inspect_model(model)
        os.sync()
        with stopwatch(sha):
            hash_file(model)
        target = bench.fresh("copy") / "model.onnx"
        with stopwatch(copy_fsync), model.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(4 * 2**20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        shutil.rmtree(target.parent)
        target = bench.fresh("copy") / "model.onnx"
        with stopwatch(sendfile):
            shutil.copyfile(model, target)
            with target.open("rb+") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(target.parent)
        os.sync()
        store = LocalStore(bench.fresh("store"))
        with stopwatch(staged), store.staging() as stage:
            stage.add(model, "model.onnx")
        shutil.rmtree(store.root)
        os.sync()
        with stopwatch(tiny):
            registry.push(bench.tiny, "tiny")
    registry.close()
    shutil.rmtree(home)
    return [parse, check, inspect, sha, copy_fsync, sendfile, staged, tiny]


def profile_push(bench: Bench) -> str:
    """cProfile of one in-process push: the top functions by cumulative and own time."""
    home = bench.fresh_home()
    registry = Registry(Settings(home=home))
    profiler = cProfile.Profile()
    profiler.enable()
    registry.push(bench.model, "big")
    profiler.disable()
    registry.close()
    shutil.rmtree(home)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(18)
    stats.sort_stats("tottime").print_stats(12)
    return out.getvalue()


def report(bench: Bench, size: int, stages: list[Samples] | None) -> None:
    rows = [s.row() for s in bench.samples() if s.seconds]
    print(f"\nmodel: {bench.model.name}, {size / 2**20:.1f} MiB in {len(bench.files)} file(s)\n")
    print(markdown_table(SAMPLE_HEADER, rows))
    print("\nratios of medians (target: push <= 1.5x):\n")
    ratio_rows = []
    for push in (bench.cli, bench.cli_empty, bench.sdk, bench.sdk_push):
        for base in (bench.cp, bench.cp_sync):
            ratio = push.median / base.median
            verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
            ratio_rows.append([push.label, base.label, f"{ratio:.1f}x", verdict])
    print(markdown_table(["push", "against", "ratio", f"<= {TARGET_RATIO}x"], ratio_rows))
    startup = bench.startup.median
    print(
        f"\nCLI push minus interpreter+import start-up: {bench.cli.median - startup:.3f} s "
        f"({(bench.cli.median - startup) / bench.cp.median:.1f}x cp, "
        f"{(bench.cli.median - startup) / bench.cp_sync.median:.1f}x cp+sync)"
    )
    megabytes = size / 1e6
    print(
        f"throughput (MB/s, median): cp {megabytes / bench.cp.median:.0f}, "
        f"cp+sync {megabytes / bench.cp_sync.median:.0f}, "
        f"CLI push {megabytes / bench.cli.median:.0f}, "
        f"SDK push() {megabytes / bench.sdk_push.median:.0f}"
    )
    if stages:
        print("\nwhere an in-process push spends its time (each stage timed alone):\n")
        print(markdown_table(SAMPLE_HEADER, [s.row() for s in stages]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="model size in MiB (200)")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    parser.add_argument(
        "--external-data",
        action="store_true",
        help=f"keep the weights in model.onnx.data (forced past {SINGLE_FILE_LIMIT_MB} MiB)",
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the stage breakdown")
    parser.add_argument("--profile", action="store_true", help="cProfile one SDK push")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where temporary models, copies and homes go (default: the temp dir); "
        "cp and push write to the same filesystem",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per command, seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    external = args.external_data or args.size_mb > SINGLE_FILE_LIMIT_MB
    with tempfile.TemporaryDirectory(prefix="modelport-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        for key, value in machine_facts(work):
            print(f"{key}: {value}")
        started = time.perf_counter()
        files = make_model(work / "source", args.size_mb, external=external)
        tiny = make_tiny_model(work / "tiny")
        size = sum(f.stat().st_size for f in files)
        print(f"made {size / 2**20:.1f} MiB model in {time.perf_counter() - started:.1f} s")
        bench = Bench(work, files, tiny, args.timeout)
        for round_number in range(args.warmup + args.reps):
            record = round_number >= args.warmup
            for step in bench.steps():
                step(record)
            print(f"round {round_number + 1}/{args.warmup + args.reps} done", flush=True)
        stages = None if args.no_breakdown else breakdown(bench, args.reps)
        report(bench, size, stages)
        if args.profile:
            print("\ncProfile of one SDK push:\n")
            print(profile_push(bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
