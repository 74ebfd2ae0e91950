"""``load_feed``: a dataset split turned into a real model's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport import InvalidInput, NotFound, Registry
from modelport.datasets import load_feed
from modelport.types import DataType, Signature, TensorSpec
from tests.dataset_files import write_csv, write_jsonl
from tests.onnx_models import make_graph_model, tensor


def _digits_cnn(path: Path) -> Path:
    """A CNN shaped for digits: ``x`` FP32 [batch, 1, 8, 8] -> Conv -> pool -> ``y`` [batch, 10]."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    weights = {"w": rng.standard_normal((4, 1, 3, 3)), "fc": rng.standard_normal((4, 10))}
    return make_graph_model(
        path,
        nodes,
        [tensor("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [tensor("y", TensorProto.FLOAT, ["batch", 10])],
        initializers=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )


@pytest.fixture
def digits(registry: Registry) -> Registry:
    registry.datasets.builtin("digits")
    registry.datasets.split("digits@1", {"train": 0.8, "val": 0.1, "test": 0.1}, stratify="label")
    return registry


def test_digits_feed_a_cnn_reshaped_and_cast(digits: Registry, tmp_path: Path) -> None:
    digits.push(_digits_cnn(tmp_path / "cnn.onnx"), "cnn")
    model = digits.load("cnn")
    try:
        feed = load_feed(digits, "digits@2:val", model.signature)
        assert (feed.rows, feed.source) == (180, "digits@2:val")
        assert feed.inputs["x"].shape == (180, 1, 8, 8) and feed.inputs["x"].dtype == np.float32
        assert feed.labels is not None and feed.labels.shape == (180,)
        whole = digits.datasets.load("digits@2:val")
        assert np.array_equal(feed.inputs["x"].reshape(180, 64), whole["pixels"].astype(np.float32))
        outputs = model.predict(feed.batch(0, 32))
        assert outputs["y"].shape == (32, 10)
    finally:
        model.close()
    assert load_feed(digits, "digits@2:train", model.signature, limit=10).inputs["x"].shape[0] == 10


def test_iris_columns_feed_the_iris_model(registry: Registry, iris_onnx: Path) -> None:
    registry.datasets.builtin("iris")
    signature = registry.push(iris_onnx, "iris").signature
    feed = load_feed(registry, "iris", signature)
    assert feed.inputs["input"].shape == (150, 4) and feed.inputs["input"].dtype == np.float32
    assert feed.labels is not None and set(feed.labels.tolist()) == {0, 1, 2}
    model = registry.load("iris")
    try:
        assert model.predict(feed.batch(0, 5))  # the real model takes what the feed gives
    finally:
        model.close()


def test_inputs_match_by_name_and_input_map_and_label_override(
    registry: Registry, tmp_path: Path
) -> None:
    registry.datasets.push(write_csv(tmp_path / "d.csv"), "shapes")
    two = Signature(
        inputs=(
            TensorSpec("width", DataType.FP32, (-1, 1)),
            TensorSpec("tall", DataType.INT32, (-1,)),
        ),
        outputs=(),
    )
    with pytest.raises(InvalidInput, match=r"model input\(s\) tall match no column of shapes@1"):
        load_feed(registry, "shapes", two)
    feed = load_feed(registry, "shapes", two, input_map={"tall": "height"}, label="colour")
    assert feed.inputs["width"].shape == (30, 1) and feed.inputs["tall"].dtype == np.int32
    assert feed.labels is not None and feed.labels[0] == "red"
    with pytest.raises(InvalidInput, match="has no column 'depth'"):
        load_feed(registry, "shapes", two, input_map={"tall": "depth"})
    with pytest.raises(InvalidInput, match="no label column 'kind'"):
        load_feed(registry, "shapes", two, label="kind")


def test_text_columns_feed_a_bytes_input(registry: Registry, tmp_path: Path) -> None:
    registry.datasets.push(write_jsonl(tmp_path / "s.jsonl"), "sentences")
    signature = Signature(inputs=(TensorSpec("text", DataType.BYTES, (-1,)),), outputs=())
    feed = load_feed(registry, "sentences", signature)
    assert feed.inputs["text"].dtype == object and feed.inputs["text"][1] == b"sentence number 1"
    numeric = Signature(inputs=(TensorSpec("x", DataType.FP32, (-1, 1)),), outputs=())
    with pytest.raises(InvalidInput, match="takes FP32, but column 'x'|are text"):
        load_feed(registry, "sentences", numeric, input_map={"x": "text"})


def test_a_feature_count_that_fits_no_input_is_a_clear_error(registry: Registry) -> None:
    registry.datasets.builtin("wine")
    cnn = Signature(inputs=(TensorSpec("x", DataType.FP32, (-1, 1, 8, 8)),), outputs=())
    with pytest.raises(
        InvalidInput,
        match=r"takes 64 value\(s\) per row \(\[-1, 1, 8, 8\]\), but the features \(alcohol, malic_acid, .* hold 13",
    ):
        load_feed(registry, "wine", cnn)
    with pytest.raises(NotFound, match="no split 'val'"):
        load_feed(registry, "wine@1:val", cnn)


def test_input_map_items_parse_or_say_how() -> None:
    from modelport.datasets import parse_input_map

    assert parse_input_map(["x=pixels", "m=mask"]) == {"x": "pixels", "m": "mask"}
    with pytest.raises(InvalidInput, match="must look like INPUT=COLUMN"):
        parse_input_map(["pixels"])
