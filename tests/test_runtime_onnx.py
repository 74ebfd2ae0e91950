"""The ONNX runtime against real models and the real onnxruntime: inspection, signatures,
prediction, and the refusals that keep corrupt or unsafe model files out."""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelport.errors import (
    InvalidInput,
    InvalidModel,
    MissingDependency,
    UnsupportedFormat,
)
from modelport.runtimes import CheckedModel, LoadedModel, LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.onnx.runtime import OnnxRuntime
from modelport.types import DataType, TensorSpec
from tests.onnx_models import (
    iris_classifier,
    iris_data,
    make_add_model,
    make_graph_model,
    make_identity_model,
    make_iris_onnx,
    make_matmul_model,
    set_external_location,
    tensor,
)

RUNTIME = OnnxRuntime()
DEFAULTS = LoadOptions()

# Every element type modelport serves, with the numpy dtype a caller sends.
ELEMENT_TYPES: dict[str, tuple[int, DataType, Any]] = {
    "fp32": (TensorProto.FLOAT, DataType.FP32, np.float32),
    "fp64": (TensorProto.DOUBLE, DataType.FP64, np.float64),
    "fp16": (TensorProto.FLOAT16, DataType.FP16, np.float16),
    "int8": (TensorProto.INT8, DataType.INT8, np.int8),
    "int16": (TensorProto.INT16, DataType.INT16, np.int16),
    "int32": (TensorProto.INT32, DataType.INT32, np.int32),
    "int64": (TensorProto.INT64, DataType.INT64, np.int64),
    "uint8": (TensorProto.UINT8, DataType.UINT8, np.uint8),
    "uint16": (TensorProto.UINT16, DataType.UINT16, np.uint16),
    "uint32": (TensorProto.UINT32, DataType.UINT32, np.uint32),
    "uint64": (TensorProto.UINT64, DataType.UINT64, np.uint64),
    "bool": (TensorProto.BOOL, DataType.BOOL, np.bool_),
    "text": (TensorProto.STRING, DataType.BYTES, object),
}
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3)


def load(path: Path, options: LoadOptions = DEFAULTS) -> LoadedModel:
    return CheckedModel(RUNTIME.load(path, options))


def sample(dtype: Any, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    if dtype is object:
        return np.array([f"w{i}".encode() for i in range(int(np.prod(shape)))], object).reshape(
            shape
        )
    return (np.arange(int(np.prod(shape))) % 2).astype(dtype).reshape(shape)


@pytest.fixture(scope="module")
def iris_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("iris")
    make_iris_onnx(directory / "zipmap.onnx")
    make_iris_onnx(directory / "plain.onnx", zipmap=False)
    make_iris_onnx(directory / "names.onnx", string_labels=True)
    return directory


# --- scikit-learn models via skl2onnx ---------------------------------------------------------


def test_iris_with_zipmap_matches_scikit_learn(iris_dir: Path) -> None:
    info = RUNTIME.inspect(iris_dir / "zipmap.onnx", PushOptions())
    assert info.signature.inputs == (TensorSpec("input", DataType.FP32, (-1, 4)),)
    assert info.signature.outputs == (
        TensorSpec("output_label", DataType.INT64, (-1,)),
        TensorSpec("output_probability", DataType.FP32, (-1, -1)),
    )
    assert info.metadata["producer"].startswith("skl2onnx")
    features, _ = iris_data()
    classifier = iris_classifier()

    result = load(iris_dir / "zipmap.onnx").predict({"input": features})

    np.testing.assert_array_equal(result["output_label"], classifier.predict(features))
    probabilities = result["output_probability"]
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (150, 3)
    np.testing.assert_allclose(probabilities, classifier.predict_proba(features), atol=1e-5)


def test_iris_without_zipmap_matches_scikit_learn(iris_dir: Path) -> None:
    info = RUNTIME.inspect(iris_dir / "plain.onnx", PushOptions())
    assert info.signature.outputs == (
        TensorSpec("label", DataType.INT64, (-1,)),
        TensorSpec("probabilities", DataType.FP32, (-1, 3)),
    )
    features, _ = iris_data()
    classifier = iris_classifier()

    result = load(iris_dir / "plain.onnx").predict({"input": features[:7]})

    np.testing.assert_array_equal(result["label"], classifier.predict(features[:7]))
    np.testing.assert_allclose(
        result["probabilities"], classifier.predict_proba(features[:7]), atol=1e-5
    )


def test_iris_with_class_names_gives_bytes_labels_and_sorted_columns(iris_dir: Path) -> None:
    info = RUNTIME.inspect(iris_dir / "names.onnx", PushOptions())
    assert info.signature.outputs[0] == TensorSpec("output_label", DataType.BYTES, (-1,))
    features, _ = iris_data()
    classifier = iris_classifier(string_labels=True)

    result = load(iris_dir / "names.onnx").predict({"input": features[::10]})

    labels = result["output_label"]
    assert labels.dtype == object
    assert list(labels) == [name.encode() for name in classifier.predict(features[::10])]
    # scikit-learn orders classes_ sorted, as the converted columns are.
    np.testing.assert_allclose(
        result["output_probability"], classifier.predict_proba(features[::10]), atol=1e-5
    )


def test_zipmap_output_with_an_empty_batch(iris_dir: Path) -> None:
    result = load(iris_dir / "zipmap.onnx").predict({"input": np.zeros((0, 4), np.float32)})
    assert result["output_probability"].shape[0] == 0
    assert result["output_label"].shape == (0,)


# --- graphs built with onnx.helper -----------------------------------------------------------


def test_every_supported_element_type_round_trips(tmp_path: Path) -> None:
    path = make_identity_model(
        tmp_path / "identity.onnx", {name: spec[0] for name, spec in ELEMENT_TYPES.items()}
    )
    signature = RUNTIME.inspect(path, PushOptions()).signature
    for name, (_, datatype, _) in ELEMENT_TYPES.items():
        assert signature.input(name) == TensorSpec(name, datatype, (-1, 2))
    assert [spec.name for spec in signature.outputs] == [f"{name}_out" for name in ELEMENT_TYPES]
    inputs = {name: sample(spec[2], (3, 2)) for name, spec in ELEMENT_TYPES.items()}

    result = load(path).predict(inputs)

    for name, (_, _, dtype) in ELEMENT_TYPES.items():
        output = result[f"{name}_out"]
        assert output.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(output, inputs[name])
    assert all(isinstance(item, bytes) for item in result["text_out"].ravel())


@pytest.mark.parametrize(
    "text",
    [
        np.array([["a", "é"]]),
        np.array([["a", "é"]], dtype=object),
        np.array([[b"a", "\u00e9".encode()]], dtype=object),
        np.array([[b"a", b"b"]]),
    ],
    ids=["numpy-str", "object-str", "object-bytes", "numpy-bytes"],
)
def test_bytes_inputs_accept_str_and_utf8_bytes(tmp_path: Path, text: np.ndarray[Any, Any]) -> None:
    model = load(make_identity_model(tmp_path / "text.onnx", {"text": TensorProto.STRING}))

    output = model.predict({"text": text})["text_out"]

    expected = [item if isinstance(item, bytes) else str(item).encode() for item in text.ravel()]
    assert list(output.ravel()) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (np.array([[b"\xff", b"a"]], dtype=object), "UTF-8"),
        (np.array([[1, "a"]], dtype=object), "bytes or str"),
    ],
)
def test_bytes_inputs_that_are_not_text_are_refused(
    tmp_path: Path, text: np.ndarray[Any, Any], message: str
) -> None:
    model = load(make_identity_model(tmp_path / "text.onnx", {"text": TensorProto.STRING}))
    with pytest.raises(InvalidInput, match=message):
        model.predict({"text": text})


def test_multiple_inputs_and_outputs(tmp_path: Path) -> None:
    model = load(make_add_model(tmp_path / "add.onnx"))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 2, dtype=np.float32)

    both = model.predict({"a": a, "b": b})
    only_product = model.predict({"a": a, "b": b}, outputs=["product"])
    reordered = model.predict({"a": a, "b": b}, outputs=["product", "sum", "product"])

    assert list(both) == ["sum", "product"]
    np.testing.assert_array_equal(both["sum"], a + b)
    np.testing.assert_array_equal(both["product"], a * b)
    assert list(only_product) == ["product"]
    assert list(reordered) == ["product", "sum"]


def test_dimensions_fixed_named_and_unnamed(tmp_path: Path) -> None:
    path = make_graph_model(
        tmp_path / "shapes.onnx",
        [
            helper.make_node("Identity", ["fixed"], ["fixed_out"]),
            helper.make_node("Identity", ["named"], ["named_out"]),
            helper.make_node("Identity", ["scalar"], ["scalar_out"]),
        ],
        [
            tensor("fixed", TensorProto.FLOAT, [2, 3]),
            tensor("named", TensorProto.INT64, ["batch", None, 5]),
            tensor("scalar", TensorProto.FLOAT, []),
        ],
        [
            tensor("fixed_out", TensorProto.FLOAT, [2, 3]),
            tensor("named_out", TensorProto.INT64, ["batch", None, 5]),
            tensor("scalar_out", TensorProto.FLOAT, []),
        ],
    )
    signature = RUNTIME.inspect(path, PushOptions()).signature
    assert signature.inputs == (
        TensorSpec("fixed", DataType.FP32, (2, 3)),
        TensorSpec("named", DataType.INT64, (-1, -1, 5)),
        TensorSpec("scalar", DataType.FP32, ()),
    )
    assert signature.outputs[1] == TensorSpec("named_out", DataType.INT64, (-1, -1, 5))

    result = load(path).predict(
        {
            "fixed": np.ones((2, 3), np.float32),
            "named": np.ones((4, 1, 5), np.int64),
            "scalar": np.array(1.5, np.float32),
        }
    )
    assert result["named_out"].shape == (4, 1, 5)
    assert result["scalar_out"].shape == ()


def test_a_tensor_without_shape_takes_any_rank(tmp_path: Path) -> None:
    path = make_graph_model(
        tmp_path / "anyrank.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [tensor("x", TensorProto.FLOAT, None)],
        [tensor("y", TensorProto.FLOAT, None)],
    )
    # onnxruntime runs such a graph, but the ONNX checker requires shapes on the main graph.
    with pytest.raises(InvalidModel, match="'shape'"):
        RUNTIME.inspect(path, PushOptions())
    model = load(path)
    assert model.signature.inputs == (TensorSpec("x", DataType.FP32, None),)
    assert model.predict({"x": np.ones((2, 1, 2), np.float32)})["y"].shape == (2, 1, 2)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    weights = onnx.numpy_helper.from_array(WEIGHTS, "weights")
    path = make_graph_model(
        tmp_path / "old.onnx",
        [helper.make_node("MatMul", ["x", "weights"], ["y"])],
        [
            tensor("x", TensorProto.FLOAT, ["batch", 4]),
            tensor("weights", TensorProto.FLOAT, [4, 3]),
        ],
        [tensor("y", TensorProto.FLOAT, ["batch", 3])],
        initializers=[weights],
    )
    assert RUNTIME.inspect(path, PushOptions()).signature.inputs == (
        TensorSpec("x", DataType.FP32, (-1, 4)),
    )
    result = load(path).predict({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(result["y"], np.ones((1, 4), np.float32) @ WEIGHTS)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"a": np.ones((1, 3), np.float32), "c": np.ones((1, 3), np.float32)},
            r"unknown input 'c'",
        ),
        ({"a": np.ones((1, 3), np.float32)}, r"missing input 'b'"),
        (
            {"a": np.ones((1, 3), np.float64), "b": np.ones((1, 3), np.float32)},
            r"input 'a': expected datatype FP32, received FP64",
        ),
        (
            {"a": np.ones((3,), np.float32), "b": np.ones((1, 3), np.float32)},
            r"input 'a': expected shape \[-1, 3\], received \[3\]",
        ),
        (
            {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 4), np.float32)},
            r"input 'b': expected shape \[-1, 3\], received \[1, 4\]",
        ),
    ],
    ids=["unknown-name", "missing", "dtype", "rank", "dim"],
)
def test_inputs_that_do_not_match_the_signature(
    tmp_path: Path, inputs: dict[str, np.ndarray[Any, Any]], message: str
) -> None:
    model = load(make_add_model(tmp_path / "add.onnx"))
    with pytest.raises(InvalidInput, match=message):
        model.predict(inputs)


def test_values_the_model_rejects_while_running(tmp_path: Path) -> None:
    path = make_graph_model(
        tmp_path / "gather.onnx",
        [helper.make_node("Gather", ["x", "index"], ["y"], axis=0)],
        [tensor("x", TensorProto.FLOAT, [3]), tensor("index", TensorProto.INT64, [1])],
        [tensor("y", TensorProto.FLOAT, [1])],
    )
    model = load(path)
    with pytest.raises(InvalidInput, match=r"could not run on these inputs: .*out of"):
        model.predict({"x": np.zeros(3, np.float32), "index": np.array([7])})


# --- what cannot be served --------------------------------------------------------------------


@pytest.mark.parametrize("action", ["inspect", "load"])
def test_bfloat16_is_unsupported(tmp_path: Path, action: str) -> None:
    path = make_identity_model(tmp_path / "bf16.onnx", {"half": TensorProto.BFLOAT16})
    with pytest.raises(UnsupportedFormat, match=r"input 'half' has element type BFLOAT16"):
        _run(action, path)


def test_sequence_input_is_unsupported(tmp_path: Path) -> None:
    sequence = helper.make_tensor_sequence_value_info("items", TensorProto.FLOAT, None)
    path = make_graph_model(
        tmp_path / "sequence.onnx",
        [helper.make_node("SequenceLength", ["items"], ["count"])],
        [sequence],
        [tensor("count", TensorProto.INT64, [])],
    )
    with pytest.raises(UnsupportedFormat, match=r"input 'items' is a sequence\(tensor\(FLOAT\)\)"):
        RUNTIME.inspect(path, PushOptions())


# --- corrupt, truncated and invalid files -----------------------------------------------------


def _run(action: str, path: Path) -> object:
    return RUNTIME.inspect(path, PushOptions()) if action == "inspect" else load(path)


@pytest.mark.parametrize("action", ["inspect", "load"])
@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_damaged_files_are_invalid(tmp_path: Path, action: str, damage: str) -> None:
    good = make_add_model(tmp_path / "good.onnx").read_bytes()
    content = {
        "random": np.random.default_rng(7).bytes(2048),
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }[damage]
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidModel, match=r"^model\.onnx (is|could)"):
        _run(action, path)


@pytest.mark.parametrize("action", ["inspect", "load"])
def test_a_graph_the_checker_rejects_is_invalid(tmp_path: Path, action: str) -> None:
    path = make_graph_model(
        tmp_path / "dangling.onnx",
        [helper.make_node("Add", ["a", "nowhere"], ["sum"])],
        [tensor("a", TensorProto.FLOAT, [1])],
        [tensor("sum", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(InvalidModel, match=r"dangling\.onnx"):
        _run(action, path)


# --- external data ----------------------------------------------------------------------------


def test_external_data_is_listed_and_travels_with_the_model(tmp_path: Path) -> None:
    path = make_matmul_model(tmp_path / "a" / "matmul.onnx", WEIGHTS, external_data="weights.bin")
    info = RUNTIME.inspect(path, PushOptions())
    assert info.files.root == path.parent
    assert info.files.entry == "matmul.onnx"
    assert info.files.paths == ("matmul.onnx", "weights.bin")

    moved = tmp_path / "b"
    moved.mkdir()
    for name in info.files.paths:
        shutil.copy(info.files.root / name, moved / name)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = load(moved / "matmul.onnx").predict({"x": x})

    np.testing.assert_allclose(result["y"], x @ WEIGHTS)


def test_external_data_in_a_subdirectory(tmp_path: Path) -> None:
    path = make_matmul_model(tmp_path / "m.onnx", WEIGHTS, external_data="weights.bin")
    (tmp_path / "data").mkdir()
    (tmp_path / "weights.bin").rename(tmp_path / "data" / "weights.bin")
    set_external_location(path, "data/./weights.bin")
    assert RUNTIME.inspect(path, PushOptions()).files.paths == ("m.onnx", "data/weights.bin")
    result = load(path).predict({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_allclose(result["y"], np.ones((1, 4), np.float32) @ WEIGHTS)


@pytest.mark.parametrize("action", ["inspect", "load"])
@pytest.mark.parametrize(
    "location",
    ["../outside.bin", "data/../../outside.bin", "OUTSIDE", "..\\outside.bin", "link.bin"],
)
def test_external_data_outside_the_model_directory_is_refused(
    tmp_path: Path, action: str, location: str
) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(WEIGHTS.tobytes())
    path = make_matmul_model(tmp_path / "model" / "m.onnx", WEIGHTS, external_data="weights.bin")
    (path.parent / "link.bin").symlink_to(outside)
    location = str(outside) if location == "OUTSIDE" else location
    set_external_location(path, location)
    with pytest.raises(InvalidModel, match=r"points outside the model directory"):
        _run(action, path)


@pytest.mark.parametrize("action", ["inspect", "load"])
def test_missing_or_short_external_data_is_invalid(tmp_path: Path, action: str) -> None:
    path = make_matmul_model(tmp_path / "m.onnx", WEIGHTS, external_data="weights.bin")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:10])
    with pytest.raises(InvalidModel, match=r"'weights.bin' .* shorter"):
        _run(action, path)
    weights.unlink()
    with pytest.raises(InvalidModel, match=r"'weights.bin' .* does not exist"):
        _run(action, path)


# --- directories ------------------------------------------------------------------------------


def test_detect(tmp_path: Path) -> None:
    model = make_add_model(tmp_path / "one" / "model.onnx")
    (tmp_path / "one" / "README.md").write_text("notes")
    make_add_model(tmp_path / "two" / "a.onnx")
    make_add_model(tmp_path / "two" / "b.onnx")
    upper = tmp_path / "upper" / "MODEL.ONNX"
    shutil.copytree(tmp_path / "one", upper.parent)
    (upper.parent / "model.onnx").rename(upper)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")

    assert RUNTIME.detect(model)
    assert RUNTIME.detect(model.parent)
    assert RUNTIME.detect(upper)
    assert not RUNTIME.detect(tmp_path / "two")
    assert not RUNTIME.detect(other)
    assert not RUNTIME.detect(tmp_path / "missing.onnx")
    assert default_runtimes().detect(model.parent).format == "onnx"


def test_a_model_directory_is_kept_whole(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    make_matmul_model(root / "matmul.onnx", WEIGHTS, external_data="weights.bin")
    (root / "docs").mkdir()
    (root / "docs" / "card.md").write_text("a card")
    (root / ".hidden").write_text("kept")

    info = RUNTIME.inspect(root, PushOptions())

    assert info.files.root == root
    assert info.files.entry == "matmul.onnx"
    assert info.files.paths == (".hidden", "docs/card.md", "matmul.onnx", "weights.bin")
    result = load(root).predict({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_allclose(result["y"], np.ones((1, 4), np.float32) @ WEIGHTS)


def test_a_directory_needs_exactly_one_model(tmp_path: Path) -> None:
    make_add_model(tmp_path / "two" / "a.onnx")
    make_add_model(tmp_path / "two" / "b.onnx")
    (tmp_path / "none").mkdir()
    with pytest.raises(InvalidModel, match=r"exactly one .* found a.onnx, b.onnx"):
        RUNTIME.inspect(tmp_path / "two", PushOptions())
    with pytest.raises(InvalidModel, match=r"found none"):
        load(tmp_path / "none")
    with pytest.raises(InvalidModel, match="does not exist"):
        RUNTIME.inspect(tmp_path / "missing", PushOptions())


@pytest.mark.parametrize("target", ["file", "directory"])
def test_symlinks_out_of_a_model_directory_are_refused(tmp_path: Path, target: str) -> None:
    root = tmp_path / "bundle"
    make_add_model(root / "model.onnx")
    secret = tmp_path / "secret"
    if target == "file":
        secret.write_text("secret")
    else:
        secret.mkdir()
    (root / "sub").mkdir()
    (root / "sub" / "link").symlink_to(secret)
    (root / "inner").symlink_to(root / "model.onnx")
    with pytest.raises(InvalidModel, match=r"sub/link is a symlink pointing outside"):
        RUNTIME.inspect(root, PushOptions())
    (root / "sub" / "link").unlink()
    assert RUNTIME.inspect(root, PushOptions()).files.paths == ("inner", "model.onnx")


# --- loading options, lifecycle, threads ------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        LoadOptions(intra_op_threads=1),
        LoadOptions(intra_op_threads=2, inter_op_threads=1),
        LoadOptions(extra={"graph_optimization_level": "disable", "execution_mode": "parallel"}),
        LoadOptions(extra={"graph_optimization_level": "basic"}),
        LoadOptions(extra={"graph_optimization_level": "extended"}),
        LoadOptions(extra={"graph_optimization_level": "all", "execution_mode": "sequential"}),
        LoadOptions(extra={"some_other_runtime_option": 1}),
    ],
)
def test_load_options_are_honoured(tmp_path: Path, options: LoadOptions) -> None:
    model = load(make_add_model(tmp_path / "add.onnx"), options)
    ones = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(model.predict({"a": ones, "b": ones})["sum"], ones * 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (LoadOptions(intra_op_threads=-1), "intra_op_threads must be 0"),
        (LoadOptions(extra={"graph_optimization_level": "max"}), "'disable', 'basic'"),
        (LoadOptions(extra={"execution_mode": "fast"}), "'sequential', 'parallel'"),
    ],
)
def test_bad_load_options(tmp_path: Path, options: LoadOptions, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load(make_add_model(tmp_path / "add.onnx"), options)


def test_missing_onnxruntime_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_add_model(tmp_path / "add.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(MissingDependency, match="pip install modelport"):
        load(path)
    assert RUNTIME.inspect(path, PushOptions()).signature.output_names() == ["sum", "product"]


def test_concurrent_predictions(iris_dir: Path) -> None:
    model = load(iris_dir / "plain.onnx", LoadOptions(intra_op_threads=1))
    features, _ = iris_data()
    expected = iris_classifier().predict(features)

    def predict_row(row: int) -> int:
        result = model.predict({"input": features[row : row + 1]})
        return int(result["label"][0])

    with ThreadPoolExecutor(max_workers=8) as pool:
        predicted = list(pool.map(predict_row, [i % 150 for i in range(600)]))

    assert predicted == [int(expected[i % 150]) for i in range(600)]
