"""Benchmark: a CNN served by its native runtime against its ONNX conversion, for PyTorch and Keras.

    .venv/bin/python bench/convert_bench.py [--latency-runs 200] [--seconds 15]

One architecture, built twice: three 3x3 conv layers (16, 32, 64 channels, ReLU, 2x2 max
pool) on 3x64x64 images, global average pooling, a 10-way linear layer; PyTorch saved with
``torch.export.save`` (dynamic batch, NCHW) and Keras 3 saved as ``.keras`` (NHWC). Each is
pushed into a throwaway MODELPORT_HOME under bench/out/convert/, converted with
``modelport.conversion.convert`` (parity checked), and loaded with ``Registry.load`` (default
``LoadOptions``: each runtime picks its threads). Native and ONNX run on the same seeded
input batch, through ``LoadedModel.predict`` (input validation included):

- latency at batch 1: median and p99 over ``--latency-runs`` calls after 10 warm-up calls;
- throughput at batch 32: inferences/s over as many calls as fit in ``--seconds``.

Every loop stops at ``--seconds`` whatever its count. The models are measured one after the
other in one process; other work on the machine shows in the numbers (the load average is
printed). Results go to stdout as Markdown and to bench/out/convert/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _timing import load_average, machine_facts, markdown_table

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "convert"
CHANNELS, SIZE, CLASSES, BATCH = 3, 64, 10, 32
WARMUP = 10


def torch_cnn(path: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = CHANNELS
    for out in (16, 32, 64):
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, CLASSES)]
    module = nn.Sequential(*layers).eval()
    example = (torch.randn(2, CHANNELS, SIZE, SIZE),)
    program = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return path


def keras_cnn(path: Path) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((SIZE, SIZE, CHANNELS), name="image")
    x = image
    for out in (16, 32, 64):
        x = keras.layers.Conv2D(out, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(CLASSES, name="logits")(x)
    keras.Model(image, logits).save(path)
    return path


def latency(call: Callable[[], Any], runs: int, seconds: float) -> tuple[float, float, int]:
    """Median and p99 (ms) of up to ``runs`` calls, stopping after ``seconds``."""
    for _ in range(WARMUP):
        call()
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    while len(samples) < runs and time.monotonic() < deadline:
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(samples), p99, len(samples)


def throughput(call: Callable[[], Any], seconds: float) -> tuple[float, int]:
    """Inferences per second at batch ``BATCH`` over the calls that fit in ``seconds``."""
    call()
    calls, start = 0, time.perf_counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        call()
        calls += 1
    return calls * BATCH / (time.perf_counter() - start), calls


def measure(model: Any, input_name: str, images: Any, args: argparse.Namespace) -> dict[str, float]:
    """Latency at batch 1 and throughput at batch ``BATCH`` of one loaded model."""
    import numpy as np

    one = {input_name: np.ascontiguousarray(images[:1])}
    batch = {input_name: np.ascontiguousarray(images)}
    try:
        median, p99, runs = latency(lambda: model.predict(one), args.latency_runs, args.seconds)
        per_s, calls = throughput(lambda: model.predict(batch), args.seconds)
    finally:
        model.close()
    return {"median_ms": median, "p99_ms": p99, "runs": runs, "throughput": per_s, "batches": calls}


def cells(figure: dict[str, float]) -> list[str]:
    return [
        f"{figure['median_ms']:.2f}",
        f"{figure['p99_ms']:.2f}",
        f"{figure['runs']:.0f}",
        f"{figure['throughput']:.0f}",
        f"{figure['batches']:.0f}",
    ]


def ratio_cells(native: dict[str, float], onnx: dict[str, float]) -> list[str]:
    keys = ("median_ms", "p99_ms", "throughput")
    median, p99, per_s = (f"{onnx[key] / native[key]:.2f}x" for key in keys)
    return [median, p99, "", per_s, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0, help="bound of every loop")
    args = parser.parse_args()

    import numpy as np

    from modelport import Registry, Settings
    from modelport.conversion import convert

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "models").mkdir(parents=True)
    rng = np.random.default_rng(0)
    nchw = rng.standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)
    cases = {
        "PyTorch (torch.export)": (torch_cnn(OUT / "models" / "cnn.pt2"), nchw),
        "Keras 3 (.keras)": (keras_cnn(OUT / "models" / "cnn.keras"), nchw.transpose(0, 2, 3, 1)),
    }
    rows, raw = [], []
    load_before = load_average()
    with Registry(Settings(home=OUT / "home")) as registry:
        for index, (label, (path, images)) in enumerate(cases.items()):
            name = f"cnn{index}"
            source = registry.push(path, name, trust_pickle=path.suffix == ".pt2")
            started = time.perf_counter()
            report = convert(registry, source.ref, to="onnx")
            convert_s = time.perf_counter() - started
            (input_name,) = [spec.name for spec in source.signature.inputs]
            figures = {
                kind: measure(registry.load(ref), input_name, images, args)
                for kind, ref in (("native", source.ref), ("onnx", report.version.ref))
            }
            for kind, figure in figures.items():
                rows.append([label, source.format if kind == "native" else "onnx", *cells(figure)])
            ratios = ratio_cells(figures["native"], figures["onnx"])
            rows.append([label, "ratio ONNX/native", *ratios])
            raw.append({"model": label, "format": source.format, "convert_seconds": convert_s,
                        "converter": report.parameters.get("converter"),
                        "parity": report.parity.metrics(), "figures": figures})  # fmt: skip
    header = ["model", "runtime", "b1 median ms", "b1 p99 ms", "n", f"b{BATCH} inf/s", "batches"]
    print(f"# convert_bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    for key, value in machine_facts(OUT):
        print(f"- {key}: {value}")
    print(f"- load average before / after: {load_before} / {load_average()}\n")
    print(markdown_table(header, rows))
    for item in raw:
        print(f"\n{item['model']}: converted in {item['convert_seconds']:.1f} s with "
              f"{item['converter']}; parity {json.dumps(item['parity'])}")  # fmt: skip
    (OUT / "results.json").write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
