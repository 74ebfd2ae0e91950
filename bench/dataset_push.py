"""Benchmark: ``modelport dataset push`` of a 1 GB CSV against ``sha256sum`` of the file.

Target (issue 11): the push streams, so its peak RSS stays under 500 MB whatever the file's
size; its wall time is set against ``sha256sum`` (one read and hash of every byte, the
least any push that identifies its data by content can do). The push also copies the file
into the store and profiles every column.

The CSV (numeric columns and a text column) is written under /tmp and deleted at the end
(``--keep`` keeps it). Each step runs ``--reps`` times, interleaved, with the file in the
page cache (one untimed read first); each push goes to a fresh registry home. Wall time and
peak RSS come from ``/usr/bin/time -v`` around the real CLI.

    .venv/bin/python bench/dataset_push.py [--size-mb 1024] [--reps 2] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "modelport")
ROWS_PER_CHUNK = 200_000


def write_csv(path: Path, size_mb: int) -> int:
    """A CSV of about ``size_mb`` MiB: six float, two integer and one text column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    random = np.random.default_rng(0)
    categories = np.array([f"city_{i:04d}" for i in range(2000)], dtype=object)
    target, rows = size_mb << 20, 0
    with pacsv.CSVWriter(path, _schema(pa)) as writer:
        while path.stat().st_size < target:
            n = ROWS_PER_CHUNK
            columns = {f"f{i}": random.standard_normal(n).round(6) for i in range(6)}
            columns["count"] = random.integers(0, 1_000_000, n)
            columns["label"] = random.integers(0, 10, n)
            columns["city"] = categories[random.integers(0, len(categories), n)]
            writer.write_table(pa.table(columns, schema=_schema(pa)))
            rows += n
    return rows


def _schema(pa: object) -> object:
    fields = [(f"f{i}", pa.float64()) for i in range(6)]  # type: ignore[attr-defined]
    fields += [("count", pa.int64()), ("label", pa.int64()), ("city", pa.string())]  # type: ignore[attr-defined]
    return pa.schema(fields)  # type: ignore[attr-defined]


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of ``argv``, from ``/usr/bin/time -v``."""
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return wall, int(rss.group(1)) * 1024 if rss else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the CSV afterwards")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="modelport-dataset-bench-"))
    path = scratch / "big.csv"
    try:
        print(f"writing a {args.size_mb} MiB CSV to {path} ...", flush=True)
        rows = write_csv(path, args.size_mb)
        size = path.stat().st_size
        print(f"{rows} rows, {size / 2**20:.0f} MiB; load average {os.getloadavg()[0]:.1f}")
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # page cache
        hashes, pushes = [], []
        for rep in range(args.reps):
            hashes.append(timed(["sha256sum", str(path)]))
            home = scratch / f"home{rep}"
            env = {**os.environ, "MODELPORT_HOME": str(home)}
            env.pop("MODELPORT_DB_URL", None)
            env.pop("MODELPORT_STORE_URL", None)
            pushes.append(timed([CLI, "dataset", "push", str(path), "--name", "big"], env))
            shutil.rmtree(home)
        best_hash = min(w for w, _ in hashes)
        best_push = min(w for w, _ in pushes)
        peak = max(r for _, r in pushes)
        print("| step | wall s (each rep) | best | peak RSS |")
        print("| --- | --- | --- | --- |")
        for name, runs in (("sha256sum", hashes), ("modelport dataset push", pushes)):
            walls = ", ".join(f"{w:.2f}" for w, _ in runs)
            rss = max(r for _, r in runs)
            print(f"| {name} | {walls} | {min(w for w, _ in runs):.2f} | {rss / 2**20:.0f} MiB |")
        print(
            f"push / sha256sum: {best_push / best_hash:.2f}x; push throughput "
            f"{size / 2**20 / best_push:.0f} MiB/s; peak RSS {peak / 2**20:.0f} MiB "
            f"(target < 500 MiB: {'met' if peak < 500 * 2**20 else 'MISSED'}); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
