"""The skeleton a push parses instead of a whole ONNX model: everything but the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.runtimes.onnx.inspect import inspect_model
from modelport.runtimes.onnx.skeleton import skeleton
from tests.onnx_models import make_graph_model, make_iris_onnx, make_matmul_model, tensor

PAYLOAD = ("float_data", "int32_data", "string_data", "int64_data", "raw_data", "double_data",
           "uint64_data")  # fmt: skip


def without_payload(model: onnx.ModelProto) -> bytes:
    for initializer in model.graph.initializer:
        for name in PAYLOAD:
            initializer.ClearField(name)
    return model.SerializeToString()


def weighted_model(path: Path) -> Path:
    """Initializers of every kind of value field, and a subgraph whose weights are kept."""
    raw = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "raw")
    floats = helper.make_tensor("floats", TensorProto.FLOAT, [2, 3], [0.5] * 6)
    ints = helper.make_tensor("ints", TensorProto.INT64, [1], [3])
    branch = helper.make_graph(
        [helper.make_node("Identity", ["inner"], ["branch_out"])],
        "branch",
        [],
        [tensor("branch_out", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.ones((2, 3), np.float32), "inner")],
    )
    return make_graph_model(
        path,
        [
            helper.make_node("Add", ["x", "raw"], ["a"]),
            helper.make_node("Add", ["a", "floats"], ["b"]),
            helper.make_node("If", ["cond"], ["c"], then_branch=branch, else_branch=branch),
            helper.make_node("Add", ["b", "c"], ["y"]),
            helper.make_node("Identity", ["ints"], ["k"]),
        ],
        [tensor("x", TensorProto.FLOAT, ["batch", 3]), tensor("cond", TensorProto.BOOL, [])],
        [tensor("y", TensorProto.FLOAT, [2, 3]), tensor("k", TensorProto.INT64, [1])],
        initializers=[raw, floats, ints],
    )


@pytest.mark.parametrize(
    "make",
    [
        weighted_model,
        lambda path: make_iris_onnx(path, zipmap=False),
        lambda path: make_matmul_model(path, np.eye(4, dtype=np.float32), external_data="w.bin"),
    ],
    ids=["every-value-field", "iris", "external-data"],
)
def test_the_skeleton_is_the_model_without_its_initializer_values(
    tmp_path: Path, make: object
) -> None:
    path = make(tmp_path / "model.onnx")  # type: ignore[operator]
    data = path.read_bytes()
    cut = skeleton(data)
    assert cut is not None
    assert len(cut) <= len(data)
    parsed = onnx.load_model_from_string(cut)
    assert parsed.SerializeToString() == without_payload(onnx.load_model_from_string(data))


def test_a_subgraph_keeps_its_own_initializers(tmp_path: Path) -> None:
    cut = skeleton(weighted_model(tmp_path / "model.onnx").read_bytes())
    assert cut is not None
    (branch_node,) = [n for n in onnx.load_model_from_string(cut).graph.node if n.op_type == "If"]
    assert branch_node.attribute[0].g.initializer[0].raw_data


@pytest.mark.parametrize("cut_at", [1, 7, 0.5, -3])
def test_bytes_that_do_not_scan_give_no_skeleton(tmp_path: Path, cut_at: float) -> None:
    data = weighted_model(tmp_path / "model.onnx").read_bytes()
    end = int(len(data) * cut_at) if isinstance(cut_at, float) else cut_at
    truncated = data[:end]
    result = skeleton(truncated)
    if result is not None:  # cut on a field boundary: still protobuf, as for the full parse
        onnx.load_model_from_string(result)


def test_garbage_gives_no_skeleton() -> None:
    assert skeleton(b"\xff" * 64) is None
    assert skeleton(b"\x0b\x00") is None  # a group: not in ONNX's schema


def test_inspection_reads_the_same_signature_as_before(tmp_path: Path) -> None:
    path = weighted_model(tmp_path / "model.onnx")
    info = inspect_model(path)
    assert [spec.name for spec in info.signature.inputs] == ["x", "cond"]
    assert [spec.name for spec in info.signature.outputs] == ["y", "k"]
