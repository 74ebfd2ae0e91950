"""The two models the serving benchmark serves, built deterministically, and their in-process limit.

- ``iris.onnx``: scikit-learn's LogisticRegression on the bundled iris data, through skl2onnx
  with ZipMap off: input ``input`` FP32 [-1, 4], outputs ``label`` INT64 [-1] and
  ``probabilities`` FP32 [-1, 3]. Costs a few microseconds: the server is the cost.
- ``cnn.onnx``: a ResNet-18-shaped network written with ``onnx.helper`` (7x7 stem, max pool,
  4 stages of 2 basic blocks with residual Add, global average pool, FC to 1000), random
  He-initialised weights with batch norm folded into conv biases, input ``input`` FP32
  [-1, 3, 224, 224], output ``output`` FP32 [-1, 1000]. Same FLOPs as ResNet-18 (~1.8 GFLOP
  per image) without torch or torchvision.

The limit is what onnxruntime does in this process with no server: inferences per second at
batch 1, 2, 4, 8, 16 with one session using every core, and at batch 1 with one session of
one thread per core run side by side.

    python bench/serve_models.py build OUT_DIR
    python bench/serve_models.py limit OUT_DIR/cnn.onnx [--seconds 3]   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_cnn", "build_iris", "example_input", "measure_limit"]

CNN_SHAPE = (3, 224, 224)
IRIS_SHAPE = (4,)
LIMIT_BATCHES = (1, 2, 4, 8, 16)


def build_iris(path: Path) -> Path:
    """Train LogisticRegression on iris and write it as ONNX (deterministic: lbfgs, no shuffle)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), labels)
    onnx_model = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    onnx_model.graph.name = "iris_logistic_regression"  # skl2onnx names graphs with a uuid
    path.write_bytes(onnx_model.SerializeToString())
    return path


class _Graph:
    """Nodes and initializers of the CNN as it is written, with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.weights: list[Any] = []
        self._count = 0

    def name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}{self._count}"

    def constant(self, kind: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(kind)
        self.weights.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        from onnx import helper

        output = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, stride: int, relu: bool) -> str:
        # He initialisation keeps activations finite through 17 convolutions; the bias stands
        # for a batch norm folded into the convolution, as exporters do for inference.
        scale = np.sqrt(2.0 / (c_in * kernel * kernel))
        weight = self.rng.standard_normal((c_out, c_in, kernel, kernel)) * scale
        bias = self.rng.standard_normal(c_out) * 0.01
        pad = kernel // 2
        out = self.node(
            "Conv",
            [x, self.constant("w", weight), self.constant("b", bias)],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )
        return self.node("Relu", [out]) if relu else out

    def basic_block(self, x: str, c_in: int, c_out: int, stride: int) -> str:
        out = self.conv(x, c_in, c_out, 3, stride, relu=True)
        out = self.conv(out, c_out, c_out, 3, 1, relu=False)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = self.conv(x, c_in, c_out, 1, stride, relu=False)
        return self.node("Relu", [self.node("Add", [out, shortcut])])


def build_cnn(path: Path, seed: int = 18) -> Path:
    """Write the ResNet-18-shaped CNN (random weights, fixed seed) as ONNX."""
    import onnx
    from onnx import TensorProto, helper

    graph = _Graph(seed)
    x = graph.conv("input", 3, 64, 7, 2, relu=True)
    x = graph.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        x = graph.basic_block(x, channels, width, 1 if stage == 0 else 2)
        x = graph.basic_block(x, width, width, 1)
        channels = width
    x = graph.node("Flatten", [graph.node("GlobalAveragePool", [x])], axis=1)
    fc_weight = graph.rng.standard_normal((512, 1000)) * np.sqrt(1.0 / 512)
    fc_bias = np.zeros(1000)
    x = graph.node("Gemm", [x, graph.constant("fc_w", fc_weight), graph.constant("fc_b", fc_bias)])
    graph.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "resnet18_shaped",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *CNN_SHAPE])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1000])],
            graph.weights,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="modelport-bench",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def example_input(model: str, rows: int = 1) -> np.ndarray:
    """The request tensor the benchmark sends: fixed values, FP32."""
    rng = np.random.default_rng(7)
    if model == "iris":
        return rng.uniform(0.5, 7.0, size=(rows, *IRIS_SHAPE)).astype(np.float32)
    return rng.standard_normal((rows, *CNN_SHAPE)).astype(np.float32)


def _rate(run: Any, feeds: dict[str, np.ndarray], rows: int, seconds: float) -> float:
    """Inferences per second of ``run`` over about ``seconds``, after a warm-up."""
    for _ in range(2):
        run(None, feeds)
    calls = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        run(None, feeds)
        calls += 1
    return calls * rows / elapsed


def measure_limit(
    path: Path, seconds: float = 3.0, batches: tuple[int, ...] = LIMIT_BATCHES
) -> dict[str, Any]:
    """In-process inferences/s: one all-core session per batch size, and one 1-thread session
    per core side by side at batch 1. ``best`` is the highest of them."""
    import onnxruntime as ort

    model = "iris" if "iris" in path.name else "cnn"
    options = ort.SessionOptions()  # intra_op_num_threads 0: one thread per core
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    per_batch = {}
    for rows in batches:
        feeds = {"input": example_input(model, rows)}
        per_batch[rows] = _rate(session.run, feeds, rows, seconds)
    del session

    streams = os.cpu_count() or 1
    single = ort.SessionOptions()
    single.intra_op_num_threads = 1
    single.inter_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(path), single, providers=["CPUExecutionProvider"])
        for _ in range(streams)
    ]
    rates = [0.0] * streams
    feeds = {"input": example_input(model, 1)}

    def stream(index: int) -> None:
        rates[index] = _rate(sessions[index].run, feeds, 1, seconds)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    side_by_side = sum(rates)
    best_rows = max(per_batch, key=lambda rows: per_batch[rows])
    best = max(per_batch[best_rows], side_by_side)
    how = (
        f"batch {best_rows}, all cores"
        if best == per_batch[best_rows]
        else (f"batch 1, {streams} sessions x 1 thread")
    )
    return {
        "model": model,
        "per_batch": per_batch,
        "streams": streams,
        "side_by_side": side_by_side,
        "best": best,
        "best_how": how,
        "onnxruntime": ort.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write iris.onnx and cnn.onnx into a folder")
    build.add_argument("out", type=Path)
    limit = commands.add_parser("limit", help="in-process inferences/s of one model, as JSON")
    limit.add_argument("model", type=Path)
    limit.add_argument("--seconds", type=float, default=3.0)
    limit.add_argument("--batches", default=",".join(map(str, LIMIT_BATCHES)))
    args = parser.parse_args(argv)
    if args.command == "build":
        args.out.mkdir(parents=True, exist_ok=True)
        for built in (build_iris(args.out / "iris.onnx"), build_cnn(args.out / "cnn.onnx")):
            print(f"{built} ({built.stat().st_size / 2**20:.1f} MiB)")
        return 0
    batches = tuple(int(b) for b in args.batches.split(","))
    print(json.dumps(measure_limit(args.model, args.seconds, batches)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
