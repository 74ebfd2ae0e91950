"""Small ONNX models written to disk for tests: any test that needs a real model imports these.

Graphs use opset 17 and IR version 8, which every onnxruntime we support can run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

Shape = Sequence[int | str | None] | None
"""A tensor shape for ``tensor``: ints are fixed, strings are named dynamic dimensions,
``None`` is an unnamed dynamic dimension; ``None`` for the whole shape records no rank."""


def tensor(name: str, elem_type: int, shape: Shape) -> onnx.ValueInfoProto:
    """A graph input or output: ``tensor("x", TensorProto.FLOAT, ["batch", 4])``."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def make_graph_model(
    path: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    *,
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    external_data: str | None = None,
) -> Path:
    """Write a one-graph model to ``path`` and return ``path``.

    With ``external_data``, every initializer goes to that file (relative to the model's
    directory) instead of into the model file.
    """
    graph = helper.make_graph(
        list(nodes), path.stem, list(inputs), list(outputs), list(initializers)
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )
    return save_model(model, path, external_data=external_data)


def save_model(model: onnx.ModelProto, path: Path, *, external_data: str | None = None) -> Path:
    """Save ``model`` to ``path`` (creating its directory), optionally with external data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        onnx.save(model, str(path))
    else:
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external_data,
            size_threshold=0,
        )
    return path


def make_identity_model(
    path: Path, elem_types: Mapping[str, int], *, shape: Shape = ("batch", 2)
) -> Path:
    """One Identity per entry: input ``name`` of that element type gives ``name + "_out"``."""
    return make_graph_model(
        path,
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name in elem_types],
        [tensor(name, elem_type, shape) for name, elem_type in elem_types.items()],
        [tensor(f"{name}_out", elem_type, shape) for name, elem_type in elem_types.items()],
    )


def make_add_model(
    path: Path, *, elem_type: int = TensorProto.FLOAT, shape: Shape = ("batch", 3)
) -> Path:
    """Inputs ``a`` and ``b``; outputs ``sum`` (a + b) and ``product`` (a * b)."""
    return make_graph_model(
        path,
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        [tensor("a", elem_type, shape), tensor("b", elem_type, shape)],
        [tensor("sum", elem_type, shape), tensor("product", elem_type, shape)],
    )


def make_matmul_model(
    path: Path, weights: np.ndarray[Any, Any], *, external_data: str | None = None
) -> Path:
    """Input ``x`` FP32 ``[batch, k]`` times the initializer ``weights`` (k x n) gives ``y``.

    With ``external_data``, the weights live in that file next to the model.
    """
    k, n = weights.shape
    return make_graph_model(
        path,
        [helper.make_node("MatMul", ["x", "weights"], ["y"])],
        [tensor("x", TensorProto.FLOAT, ["batch", k])],
        [tensor("y", TensorProto.FLOAT, ["batch", n])],
        initializers=[numpy_helper.from_array(weights.astype(np.float32), "weights")],
        external_data=external_data,
    )


def set_external_location(path: Path, location: str) -> Path:
    """Point every external tensor of the model at ``path`` to ``location``, in place."""
    model = onnx.load(str(path), load_external_data=False)
    for initializer in model.graph.initializer:
        for entry in initializer.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))
    return path


def set_external_field(path: Path, key: str, value: str) -> Path:
    """Set ``key`` (offset, length, ...) of every external tensor of the model at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    for initializer in model.graph.initializer:
        for entry in initializer.external_data:
            if entry.key == key:
                entry.value = value
                break
        else:
            initializer.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def iris_data(*, string_labels: bool = False) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """scikit-learn's bundled iris: features as FP32 (150 x 4) and labels (ints or names)."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    features = iris.data.astype(np.float32)
    labels = iris.target_names[iris.target] if string_labels else iris.target.astype(np.int64)
    return features, labels


def iris_classifier(*, string_labels: bool = False) -> Any:
    """A logistic regression fitted on iris; with ``string_labels`` it predicts class names."""
    from sklearn.linear_model import LogisticRegression

    features, labels = iris_data(string_labels=string_labels)
    return LogisticRegression(max_iter=1000).fit(features, labels)


def make_iris_onnx(
    path: Path,
    *,
    zipmap: bool = True,
    string_labels: bool = False,
    classifier: Any = None,
) -> Path:
    """Convert an iris classifier with skl2onnx and save it to ``path``.

    The input is ``input`` FP32 ``[batch, 4]``; outputs are ``output_label`` and
    ``output_probability`` (a ZipMap sequence of maps by default, a FP32 tensor with
    ``zipmap=False``). ``classifier`` defaults to ``iris_classifier(string_labels=...)``.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if classifier is None:
        classifier = iris_classifier(string_labels=string_labels)
    model = convert_sklearn(
        classifier,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(classifier): {"zipmap": zipmap}},
    )
    return save_model(model, path)


def make_slow_model(path: Path, *, width: int = 512, depth: int = 16) -> Path:
    """Input ``x`` FP32 ``[batch, width]`` through ``depth`` MatMuls: cost grows with rows.

    Output ``y`` is ``x @ I @ I ...`` (identity weights), so results stay checkable.
    """
    eye = np.eye(width, dtype=np.float32)
    nodes = []
    previous = "x"
    for layer in range(depth):
        out = "y" if layer == depth - 1 else f"h{layer}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [out]))
        previous = out
    return make_graph_model(
        path,
        nodes,
        [tensor("x", TensorProto.FLOAT, ["batch", width])],
        [tensor("y", TensorProto.FLOAT, ["batch", width])],
        initializers=[numpy_helper.from_array(eye, f"w{layer}") for layer in range(depth)],
    )


def make_conv_model(path: Path) -> Path:
    """A small CNN: input ``x`` FP32 [batch, 3, 16, 16] through two Conv+Relu layers, a
    global pool and a MatMul gives ``y`` [batch, 10]. Weights of 18 KiB: big enough to
    leave the graph for ``weights.bin``, and Convs that "all" optimizes for this CPU."""
    rng = np.random.default_rng(3)
    weights = {
        "w1": rng.standard_normal((16, 3, 3, 3)),
        "b1": rng.standard_normal(16),
        "w2": rng.standard_normal((32, 16, 3, 3)),
        "b2": rng.standard_normal(32),
        "fc": rng.standard_normal((32, 10)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    return make_graph_model(
        path,
        nodes,
        [tensor("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [tensor("y", TensorProto.FLOAT, ["batch", 10])],
        initializers=[
            numpy_helper.from_array(value.astype(np.float32), name)
            for name, value in weights.items()
        ],
    )
