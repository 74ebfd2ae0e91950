"""Benchmark: cold load of the ResNet-18-shaped CNN from an encrypted store against a plain one.

A cold load is what a server does the first time it serves a version on a machine: check
out the version's files (plain: hard links from the local store; encrypted: each blob read,
decrypted and hashed into the private memory-backed directory), re-hash the checkout (the
default verify policy), and build the onnxruntime session (whose optimized graph, a derived
file, is built again too). Before each timed load the checkout and derived files are
removed; the store's files stay in the page cache, so this measures the CPU cost of
decryption, not a disk. Push times are shown too (encrypting while hashing).

    .venv/bin/python bench/encryption_load.py [--reps 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _timing import SAMPLE_HEADER, Samples, load_average, machine_facts, markdown_table
from serve_models import build_cnn

KINDS = ("plain", "encrypted")


def drop_checkouts(root: Path, *, encrypted: bool) -> None:
    """What a load finds on a machine that did not load this version yet: no checkout, no
    derived files, and (encrypted) no decrypted blob copies. A plain local store's cache
    is the store's own directory: its ``blobs/`` are the store."""
    for sub in ("checkouts", "derived", *(("blobs",) if encrypted else ())):
        shutil.rmtree(root / sub, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    from modelport import Registry, Settings
    from modelport.security.crypto import generate_key

    key = generate_key()
    samples = {
        (kind, what): Samples(f"{kind}: {what}") for kind in KINDS for what in ("push", "load")
    }
    with tempfile.TemporaryDirectory(prefix="modelport-encryption-bench-") as tmp:
        work = Path(tmp)
        for fact, value in machine_facts(work):
            print(f"{fact}: {value}")
        model = build_cnn(work / "cnn.onnx")
        size = model.stat().st_size
        for kind in KINDS:
            settings = Settings(
                home=work / kind, encryption_key=key if kind == "encrypted" else None
            )
            with Registry(settings) as registry:
                start = time.perf_counter()
                registry.push(model, "cnn")
                samples[kind, "push"].add(time.perf_counter() - start)
        for round_number in range(args.reps + 1):  # the first round warms up, untimed
            for kind in KINDS:
                settings = Settings(
                    home=work / kind, encryption_key=key if kind == "encrypted" else None
                )
                with Registry(settings) as registry:
                    drop_checkouts(registry.checkout.root, encrypted=kind == "encrypted")
                    start = time.perf_counter()
                    registry.load("cnn").close()
                    if round_number:
                        samples[kind, "load"].add(time.perf_counter() - start)
            print(f"round {round_number + 1}/{args.reps + 1} done", flush=True)
    print(f"\nmodel: ResNet-18-shaped CNN, {size / 2**20:.1f} MiB ONNX, one file\n")
    print(markdown_table(SAMPLE_HEADER, [s.row() for s in samples.values()]))
    plain, encrypted = samples["plain", "load"], samples["encrypted", "load"]
    print(
        f"\ncold load, encrypted / plain (ratio of medians): "
        f"{encrypted.median / plain.median:.2f}x "
        f"(+{(encrypted.median - plain.median) * 1000:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s; load average {load_average()}")
    sys.exit(code)
