"""Benchmark: pushing a large ONNX model into the registry against copying it with ``cp``.

Target (registry issue): ``modelport push`` of a ~200 MB model takes at most 1.5x the wall
time of ``cp``. The push validates the model, hashes every byte and fsyncs what it stores,
so it is set against both plain ``cp`` and ``cp`` followed by ``sync FILE``.

Every step runs ``--reps`` times, interleaved round by round (after ``--warmup`` untimed
rounds), with the source file in the page cache, destinations on the same filesystem as
the registry home, and a full ``sync`` (untimed) before each step so that no step pays for
another's dirty pages. Then the push's stages are timed one by one, in-process, with the
functions the push calls. The measuring process imports neither onnx nor modelport: model
making, SDK pushes and the breakdown run in worker children, so each peak RSS is the
child's own.

    .venv/bin/python bench/push_vs_cp.py [--size-mb 200] [--reps 5] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _timing import (
    SAMPLE_HEADER,
    BenchError,
    Run,
    Samples,
    cli_argv,
    load_average,
    machine_facts,
    markdown_table,
    run_timed,
)

TARGET_RATIO = 1.5
# protobuf refuses to serialise a message of 2 GiB or more; leave headroom for the graph.
SINGLE_FILE_LIMIT_MB = 1900


# -- workers: run in child processes, print one JSON document ---------------------------


def make_models(directory: Path, size_mb: int, external: bool) -> dict[str, Any]:
    """Write Y = X + W, whose FP32 initializer W fills ``size_mb`` MiB, and a tiny model."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def save(graph: Any, path: Path, **kwargs: Any) -> None:
        opsets = [helper.make_opsetid("", 17)]
        onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path), **kwargs)

    count = size_mb * 2**20 // 4
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(count, dtype=np.float32), "W"
    )
    tensor = helper.make_tensor_value_info
    big = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "big",
        [tensor("X", TensorProto.FLOAT, [count])],
        [tensor("Y", TensorProto.FLOAT, [count])],
        [weights],
    )
    directory.mkdir(parents=True)
    files = [directory / "model.onnx"]
    if external:
        files.append(directory / "model.onnx.data")
        save(big, files[0], save_as_external_data=True, location=files[1].name)
    else:
        save(big, files[0])
    tiny_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [tensor("x", TensorProto.FLOAT, [1, 4])],
        [tensor("y", TensorProto.FLOAT, [1, 4])],
    )
    tiny = directory.parent / "tiny" / "tiny.onnx"
    tiny.parent.mkdir()
    save(tiny_graph, tiny)
    return {"files": [str(f) for f in files], "tiny": str(tiny)}


def sdk_push(model: Path, home: Path) -> dict[str, Any]:
    """One SDK push into ``home``, timed in-process after every import it needs."""
    import modelport.runtimes.onnx.runtime  # noqa: F401  (the push imports it lazily; not timed)
    from modelport.config import Settings
    from modelport.registry import Registry

    start = time.perf_counter()
    registry = Registry(Settings(home=home))
    opened = time.perf_counter()
    version = registry.push(model, "big")
    pushed = time.perf_counter()
    registry.close()
    closed = time.perf_counter()
    return {
        "open": opened - start,
        "push": pushed - opened,
        "total": closed - start,
        "size": version.size,
    }


def breakdown(tiny: Path, work: Path, files: list[Path], reps: int) -> dict[str, list[float]]:
    """Time the push's stages one by one, with the functions the push calls.

    ``files`` are the model's files, the ``.onnx`` entry first; byte-level stages
    (hash, copy) go over all of them, as the push does.
    """
    import onnx

    from modelport.config import Settings
    from modelport.registry import Registry
    from modelport.registry.store import LocalStore, hash_file
    from modelport.runtimes.onnx.inspect import inspect_model, read_model

    model = files[0]
    times: dict[str, list[float]] = {}

    @contextmanager
    def timed(label: str) -> Iterator[None]:
        os.sync()
        start = time.perf_counter()
        yield
        times.setdefault(label, []).append(time.perf_counter() - start)

    def fresh(name: str) -> Path:
        path = work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def copy_loop(source: Path, target: Path) -> None:
        with source.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(4 * 2**20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())

    def copy_sendfile(source: Path, target: Path) -> None:
        shutil.copyfile(source, target)
        with target.open("rb+") as handle:
            os.fsync(handle.fileno())

    registry = Registry(Settings(home=fresh("home")))
    for _ in range(reps):
        with timed("onnx.load(load_external_data=False)  [read_model]"):
            proto = read_model(model)
        # As inspect_model does: a model with external data is checked by path.
        with timed("onnx.checker.check_model(proto, or path if external data)"):
            onnx.checker.check_model(str(model) if len(files) > 1 else proto)
        del proto
        with timed("runtime.inspect() total  [load + check + signature]"):
            inspect_model(model)
        with timed("sha256 of the files alone  [hash_file]"):
            for source in files:
                hash_file(source)
        target = fresh("copy")
        with timed("4 MiB read/write loop + fsync, no hash"):
            for source in files:
                copy_loop(source, target / source.name)
        target = fresh("copy")
        with timed("shutil.copyfile (sendfile) + fsync"):
            for source in files:
                copy_sendfile(source, target / source.name)
        store = LocalStore(fresh("store"))
        with timed("LocalStore.put()  [copy + sha256 + fsync, as push]"):
            for source in files:
                with source.open("rb") as handle:
                    store.put(handle)
        with timed("SDK push() of a tiny model  [fixed cost: DB, get()]"):
            registry.push(tiny, "tiny")
    registry.close()
    return times


def profile_push(model: Path, home: Path) -> str:
    """cProfile of one in-process push: the top functions by cumulative and own time."""
    import cProfile
    import io
    import pstats

    import modelport.runtimes.onnx.runtime  # noqa: F401
    from modelport.config import Settings
    from modelport.registry import Registry

    registry = Registry(Settings(home=home))
    profiler = cProfile.Profile()
    profiler.enable()
    registry.push(model, "big")
    profiler.disable()
    registry.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(18)
    stats.sort_stats("tottime").print_stats(12)
    return out.getvalue()


def worker(args: argparse.Namespace) -> int:
    kind, paths = args.worker, [Path(p) for p in args.paths]
    if kind == "make-models":
        result: Any = make_models(paths[0], args.size_mb, args.external_data)
    elif kind == "sdk-push":
        result = sdk_push(paths[0], paths[1])
    elif kind == "breakdown":
        result = breakdown(paths[0], paths[1], paths[2:], args.reps)
    else:
        result = profile_push(paths[0], paths[1])
    sys.stdout.write(json.dumps(result))
    return 0


# -- the measuring process --------------------------------------------------------------


class Bench:
    """The steps of one run. Each step makes what it needs in a fresh directory under
    ``work`` and removes it afterwards, so a run holds few model copies on disk."""

    def __init__(self, work: Path, files: list[Path], tiny: Path, timeout: float) -> None:
        self.work = work
        self.files = files
        self.model = files[0]
        self.tiny = tiny
        self.timeout = timeout
        self.counter = 0
        self.cp = Samples("cp MODEL DEST/")
        self.cp_sync = Samples("cp MODEL DEST/ && sync DEST/FILE")
        # OpenSSL's sha256 is what hashlib runs (SHA-NI where the CPU has it); coreutils'
        # sha256sum may be several times slower and would flatter the push.
        self.hasher = ["openssl", "dgst", "-sha256"] if shutil.which("openssl") else ["sha256sum"]
        self.sha256sum = Samples(f"{' '.join(self.hasher)} MODEL  (reference)")
        self.startup = Samples("python -c 'import modelport.cli.main'")
        self.startup_onnx = Samples("python -c 'import modelport.cli.main, ...runtimes.onnx'")
        self.cli = Samples("modelport push MODEL --name big (registry exists)")
        self.cli_empty = Samples("modelport push MODEL --name big (empty home: creates DB)")
        self.sdk = Samples("SDK Registry(...) + push() + close(), in-process")
        self.sdk_open = Samples("SDK Registry(...) open (DB exists)")
        self.sdk_push = Samples("SDK push() alone")

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
        run_timed([*cli_argv(), "ls", "--json"], env=home_env(home), timeout=self.timeout)
        os.sync()
        return home

    def run(self, argv: list[str], home: Path | None = None, capture: bool = False) -> Run:
        env = home_env(home) if home else None
        return run_timed(argv, env=env, timeout=self.timeout, capture=capture)

    # -- steps: each takes whether to record its numbers ---------------------------------

    def step_cp(self, record: bool) -> None:
        dest = self.fresh("cp")
        done = self.run(["cp", *map(str, self.files), f"{dest}/"])
        if record:
            self.cp.add(done.seconds)
        shutil.rmtree(dest)

    def step_cp_sync(self, record: bool) -> None:
        dest = self.fresh("cp-sync")
        copied = self.run(["cp", *map(str, self.files), f"{dest}/"])
        synced = self.run(["sync", *(str(dest / f.name) for f in self.files)])
        if record:
            self.cp_sync.add(copied.seconds + synced.seconds)
        shutil.rmtree(dest)

    def step_sha256sum(self, record: bool) -> None:
        os.sync()
        done = self.run([*self.hasher, *map(str, self.files)])
        if record:
            self.sha256sum.add(done.seconds)

    def step_startup(self, record: bool) -> None:
        os.sync()
        done = self.run([sys.executable, "-c", "import modelport.cli.main"])
        with_onnx = self.run(
            [sys.executable, "-c", "import modelport.cli.main, modelport.runtimes.onnx.runtime"]
        )
        if record:
            self.startup.add(done.seconds, done.peak_rss)
            self.startup_onnx.add(with_onnx.seconds, with_onnx.peak_rss)

    def step_cli(self, record: bool) -> None:
        home = self.fresh_home()
        done = self.run([*cli_argv(), "push", str(self.model), "--name", "big"], home)
        if record:
            self.cli.add(done.seconds, done.peak_rss)
        shutil.rmtree(home)

    def step_cli_empty(self, record: bool) -> None:
        home = self.fresh("empty-home")
        done = self.run([*cli_argv(), "push", str(self.model), "--name", "big"], home)
        if record:
            self.cli_empty.add(done.seconds, done.peak_rss)
        shutil.rmtree(home)

    def step_sdk(self, record: bool) -> None:
        home = self.fresh_home()
        done = self.run(worker_argv("sdk-push", self.model, home), capture=True)
        result = json.loads(done.stdout)
        if result["size"] != sum(f.stat().st_size for f in self.files):
            raise BenchError(f"the SDK pushed {result['size']} bytes, not the model's size")
        if record:
            self.sdk.add(result["total"], done.peak_rss)
            self.sdk_open.add(result["open"])
            self.sdk_push.add(result["push"])
        shutil.rmtree(home)

    def steps(self) -> list[Callable[[bool], None]]:
        return [
            self.step_cp,
            self.step_cp_sync,
            self.step_sha256sum,
            self.step_startup,
            self.step_cli,
            self.step_cli_empty,
            self.step_sdk,
        ]

    def samples(self) -> list[Samples]:
        return [
            self.cp,
            self.cp_sync,
            self.sha256sum,
            self.startup,
            self.startup_onnx,
            self.cli,
            self.cli_empty,
            self.sdk,
            self.sdk_open,
            self.sdk_push,
        ]


def home_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "MODELPORT_HOME": str(home)}
    env.pop("MODELPORT_DB_URL", None)  # the registry must live in the fresh home
    return env


def worker_argv(kind: str, *paths: Path, reps: int = 1) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--reps",
        str(reps),
        *map(str, paths),
    ]


def report(bench: Bench, size: int, stages: list[Samples] | None) -> None:
    rows = [s.row() for s in bench.samples() if s.seconds]
    print(f"\nmodel: {bench.model.name}, {size / 2**20:.1f} MiB in {len(bench.files)} file(s)\n")
    print(markdown_table(SAMPLE_HEADER, rows))
    print(f"\nratios of medians (target: push <= {TARGET_RATIO}x cp):\n")
    # What the push does, done by coreutils: store durably, and hash.
    durable_and_hashed = Samples(
        "cp + sync FILE + sha256 (sum of medians)",
        [bench.cp_sync.median + bench.sha256sum.median],
    )
    ratio_rows = []
    for push in (bench.cli, bench.cli_empty, bench.sdk, bench.sdk_push):
        for base in (bench.cp, bench.cp_sync, durable_and_hashed):
            ratio = push.median / base.median
            verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
            ratio_rows.append([push.label, base.label, f"{ratio:.1f}x", verdict])
    print(markdown_table(["push", "against", "ratio", "target"], ratio_rows))
    without_startup = bench.cli.median - bench.startup_onnx.median
    print(
        "\nCLI push minus start-up with the onnx runtime imported: "
        f"{without_startup:.3f} s ({without_startup / bench.cp.median:.1f}x cp, "
        f"{without_startup / bench.cp_sync.median:.1f}x cp+sync)"
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
    parser.add_argument("--profile", action="store_true", help="also cProfile one SDK push")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where temporary models, copies and homes go (default: the temp dir); "
        "cp and push write to the same filesystem",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per command, seconds")
    parser.add_argument(
        "--worker",
        choices=["make-models", "sdk-push", "breakdown", "profile"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    external = args.external_data or args.size_mb > SINGLE_FILE_LIMIT_MB
    with tempfile.TemporaryDirectory(prefix="modelport-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        for key, value in machine_facts(work):
            print(f"{key}: {value}")
        make = [*worker_argv("make-models", work / "source"), "--size-mb", str(args.size_mb)]
        if external:
            make.append("--external-data")
        made = run_timed(make, timeout=args.timeout, capture=True)
        paths = json.loads(made.stdout)
        files = [Path(p) for p in paths["files"]]
        size = sum(f.stat().st_size for f in files)
        print(f"made a {size / 2**20:.1f} MiB model in {made.seconds:.1f} s", flush=True)
        bench = Bench(work, files, Path(paths["tiny"]), args.timeout)
        for round_number in range(args.warmup + args.reps):
            record = round_number >= args.warmup
            for step in bench.steps():
                step(record)
            print(f"round {round_number + 1}/{args.warmup + args.reps} done", flush=True)
        stages = None
        if not args.no_breakdown:
            scratch = bench.fresh("breakdown")
            command = worker_argv("breakdown", bench.tiny, scratch, *bench.files, reps=args.reps)
            times = json.loads(bench.run(command, capture=True).stdout)
            stages = [Samples(label, seconds) for label, seconds in times.items()]
            shutil.rmtree(scratch)
        report(bench, size, stages)
        if args.profile:
            home = bench.fresh_home()
            profile = bench.run(worker_argv("profile", bench.model, home), capture=True)
            print("\ncProfile of one SDK push:\n")
            print(json.loads(profile.stdout))
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    if "--worker" not in sys.argv:
        print(f"\nbenchmark took {time.monotonic() - started:.0f} s; load average {load_average()}")
    sys.exit(code)
