"""The ``caffe`` runtime against a Caffe network written by hand (prototxt text + a binary
NetParameter of random weights): predictions equal to numpy's and to OpenCV's own, through the
registry and a real server; the ways a prototxt declares inputs; the refusals, one line each."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from modelport import Registry, Settings
from modelport.errors import (
    InvalidInput,
    InvalidModel,
    ModelportError,
    Unavailable,
    UnsupportedFormat,
)
from modelport.runtimes import CheckedModel, LoadedModel, LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.caffe import runtime as caffe_runtime
from modelport.runtimes.caffe.prototxt import NetworkInput, network_inputs, parse_text
from modelport.runtimes.caffe.runtime import CaffeRuntime
from modelport.runtimes.threads import ProcessThreads
from modelport.types import DataType, Signature, TensorSpec
from tests.caffe_models import (
    reference_forward,
    stacked_prototxt,
    tiny_prototxt,
    tiny_weights,
    write_caffemodel,
)
from tests.conftest import run_cli
from tests.serving_fixtures import predict_in_process, running_server

CAFFE = CaffeRuntime()
WEIGHTS = tiny_weights()
IMAGES = np.random.default_rng(7).standard_normal((6, 3, 8, 8)).astype(np.float32)
EXPECTED = reference_forward(IMAGES, WEIGHTS)
SIGNATURE = Signature(
    inputs=(TensorSpec("data", DataType.FP32, (-1, 3, 8, 8)),),
    outputs=(TensorSpec("prob", DataType.FP32, (-1, 5)),),
)
ONE_LINE_ERROR = r"error: [^\n]+\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every prototxt and weights file the tests use, written once per worker."""
    root = tmp_path_factory.mktemp("caffe")
    made = {"weights": write_caffemodel(root / "weights.caffemodel", WEIGHTS)}
    for form in ("input_layer", "input_shape", "input_dim", "no_shape"):
        made[form] = root / f"{form}.prototxt"
        made[form].write_text(tiny_prototxt(form))
    made["deploy"] = root / "deploy.prototxt"
    made["deploy"].write_text(tiny_prototxt())
    made["fixed"] = root / "fixed.prototxt"
    made["fixed"].write_text(stacked_prototxt())
    (root / "net").mkdir()
    (root / "blobs").mkdir()
    made["apart_prototxt"] = root / "net" / "deploy.prototxt"
    made["apart_prototxt"].write_text(tiny_prototxt())
    made["apart_weights"] = write_caffemodel(root / "blobs" / "weights.caffemodel", WEIGHTS)
    return made


@pytest.fixture
def sqlite_registry(home: Path) -> Iterator[Registry]:
    with Registry(Settings(home=home)) as registry:
        yield registry


def load(prototxt: Path, weights: Path, options: PushOptions | None = None) -> LoadedModel:
    """Inspect and load as a push and a later load would, metadata passed along."""
    given = options or PushOptions()
    info = CAFFE.inspect(
        prototxt, PushOptions(given.example, given.signature, companions=(weights,))
    )
    return CheckedModel(CAFFE.load(prototxt, LoadOptions(metadata=info.metadata)))


def opencv_forward(prototxt: Path, weights: Path, images: np.ndarray[Any, Any]) -> Any:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    net.setInput(images, "data")
    return net.forward("prob")


# --- pushing and predicting -------------------------------------------------------------------


def test_push_through_the_cli_and_predict_like_numpy_and_opencv(
    home: Path, files: dict[str, Path]
) -> None:
    pushed = run_cli(
        "push", files["deploy"], files["weights"], "--name", "legacy", "--json"
    )  # fmt: skip

    assert pushed.returncode == 0, pushed.stderr
    version = json.loads(pushed.stdout)
    assert version["format"] == "caffe"
    assert version["entry"] == "deploy.prototxt"
    assert [f["path"] for f in version["files"]] == ["deploy.prototxt", "weights.caffemodel"]
    assert Signature.from_dict(version["signature"]) == SIGNATURE
    assert version["metadata"]["weights"] == "weights.caffemodel"
    assert version["metadata"]["opencv_version"] == cv2.__version__

    for rows in (1, 6):
        result = predict_in_process(home, "legacy", {"data": IMAGES[:rows]})["prob"]
        assert result.dtype == np.float32 and result.shape == (rows, 5)
        np.testing.assert_allclose(result, EXPECTED[:rows], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            result, opencv_forward(files["deploy"], files["weights"], IMAGES[:rows]), rtol=1e-6
        )


@pytest.mark.parametrize("form", ["input_layer", "input_shape", "input_dim"])
def test_each_way_of_declaring_the_input(files: dict[str, Path], form: str) -> None:
    model = load(files[form], files["weights"])

    assert model.signature == SIGNATURE
    np.testing.assert_allclose(
        model.predict({"data": IMAGES})["prob"], EXPECTED, rtol=1e-4, atol=1e-6
    )


def test_without_an_input_shape_an_example_or_a_signature_is_needed(
    home: Path, tmp_path: Path, files: dict[str, Path]
) -> None:
    with pytest.raises(InvalidInput) as raised:
        CAFFE.inspect(files["no_shape"], PushOptions(companions=(files["weights"],)))
    assert str(raised.value) == (
        "no_shape.prototxt gives no shape for input 'data'; give an example input with "
        "--example x.npz, or the signature with --signature sig.json"
    )

    example = tmp_path / "example.npz"
    np.savez(example, data=IMAGES[:1].astype(np.float64))
    pushed = run_cli(
        "push", files["no_shape"], files["weights"], "--name", "m", "--example", example, "--json"
    )
    assert pushed.returncode == 0, pushed.stderr
    assert Signature.from_dict(json.loads(pushed.stdout)["signature"]) == SIGNATURE

    narrowed = Signature(
        inputs=(TensorSpec("data", DataType.FP32, (2, 3, 8, 8)),),
        outputs=(TensorSpec("prob", DataType.FP32, (2, 5)),),
    )
    model = load(files["no_shape"], files["weights"], PushOptions(signature=narrowed))
    assert model.signature == narrowed
    np.testing.assert_allclose(
        model.predict({"data": IMAGES[:2]})["prob"], EXPECTED[:2], rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            PushOptions(example={"image": IMAGES[:1]}),
            r"example names 'image'; .* inputs are 'data'",
        ),
        (
            PushOptions(example={"data": IMAGES[:1, :, :6, :6]}),
            r"cannot run on the --example shapes \(data \[1, 3, 6, 6\]\)",
        ),
        (
            PushOptions(
                signature=Signature(
                    SIGNATURE.inputs, (TensorSpec("score", DataType.FP32, (-1, 5)),)
                )
            ),
            r"output 'score', which is no layer of the network; its final layers are 'prob'",
        ),
        (
            PushOptions(
                signature=Signature(SIGNATURE.inputs, (TensorSpec("prob", DataType.FP32, (-1, 7)),))
            ),
            r"gives output 'prob' shape \[-1, 7\]; the network gives \[1, 5\]",
        ),
        (
            PushOptions(
                signature=Signature(
                    (TensorSpec("data", DataType.UINT8, (-1, 3, 8, 8)),), SIGNATURE.outputs
                )
            ),
            r"'data' as UINT8; Caffe nets in OpenCV take and give FP32",
        ),
    ],
    ids=["example-name", "example-shape", "output-name", "output-shape", "dtype"],
)
def test_examples_and_signatures_that_do_not_fit(
    files: dict[str, Path], options: PushOptions, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as raised:
        CAFFE.inspect(
            files["no_shape"],
            PushOptions(options.example, options.signature, companions=(files["weights"],)),
        )
    assert "\n" not in str(raised.value)


def test_files_in_different_directories(sqlite_registry: Registry, files: dict[str, Path]) -> None:
    version = sqlite_registry.push([files["apart_prototxt"], files["apart_weights"]], "apart")

    # Stored side by side under their own names, whatever directories they came from.
    assert sorted(f.path for f in version.files) == ["deploy.prototxt", "weights.caffemodel"]
    assert version.entry == "deploy.prototxt"
    result = sqlite_registry.load("apart").predict({"data": IMAGES})["prob"]
    np.testing.assert_allclose(result, EXPECTED, rtol=1e-4, atol=1e-6)


def test_a_net_whose_outputs_do_not_follow_the_batch_keeps_its_batch_size(
    files: dict[str, Path],
) -> None:
    model = load(files["fixed"], files["weights"])

    assert model.signature == Signature(
        inputs=(TensorSpec("data", DataType.FP32, (1, 3, 8, 8)),),
        outputs=(TensorSpec("prob", DataType.FP32, (2, 5)),),
    )
    np.testing.assert_allclose(
        model.predict({"data": IMAGES[:1]})["prob"], EXPECTED[[0, 0]], rtol=1e-4, atol=1e-6
    )
    with pytest.raises(
        InvalidInput, match=r"expected shape \[1, 3, 8, 8\], received \[2, 3, 8, 8\]"
    ):
        model.predict({"data": IMAGES[:2]})
    dynamic = Signature(SIGNATURE.inputs, (TensorSpec("prob", DataType.FP32, (-1, 5)),))
    with pytest.raises(InvalidInput, match=r"dynamic, but the network runs only the batch size"):
        load(files["fixed"], files["weights"], PushOptions(signature=dynamic))


def test_inputs_and_outputs_the_model_refuses(files: dict[str, Path]) -> None:
    model = load(files["deploy"], files["weights"])

    with pytest.raises(
        InvalidInput, match=r"expected shape \[-1, 3, 8, 8\], received \[6, 3, 9, 9\]"
    ):
        model.predict({"data": np.zeros((6, 3, 9, 9), np.float32)})
    with pytest.raises(InvalidInput, match="expected datatype FP32, received FP64"):
        model.predict({"data": IMAGES.astype(np.float64)})
    with pytest.raises(InvalidInput, match=r"unknown output 'fc1'; the model gives 'prob'"):
        model.predict({"data": IMAGES}, outputs=["fc1"])
    assert list(model.predict({"data": IMAGES}, outputs=["prob"])) == ["prob"]
    model.close()
    with pytest.raises(Unavailable, match="closed"):
        model.predict({"data": IMAGES})


def test_read_only_and_strided_inputs(files: dict[str, Path]) -> None:
    model = load(files["deploy"], files["weights"])
    frozen = IMAGES.copy()
    frozen.flags.writeable = False
    np.testing.assert_allclose(
        model.predict({"data": frozen})["prob"], EXPECTED, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        model.predict({"data": IMAGES[::-1]})["prob"], EXPECTED[::-1], rtol=1e-4, atol=1e-6
    )


def test_concurrent_predictions_from_many_threads(files: dict[str, Path]) -> None:
    model = load(files["deploy"], files["weights"])

    def predict(index: int) -> np.ndarray[Any, Any]:
        rows = IMAGES[index % 6 : index % 6 + 1 + index % 3]
        return model.predict({"data": rows})["prob"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(predict, range(300)))
    for index, result in enumerate(results):
        expected = EXPECTED[index % 6 : index % 6 + 1 + index % 3]
        np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-6)


def test_intra_op_threads_are_set_once_per_process(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(caffe_runtime, "_OPENCV_THREADS", ProcessThreads("OpenCV"))
    info = CAFFE.inspect(files["deploy"], PushOptions(companions=(files["weights"],)))
    before = cv2.getNumThreads()
    try:
        CAFFE.load(files["deploy"], LoadOptions(intra_op_threads=1, metadata=info.metadata))
        assert cv2.getNumThreads() == 1
        with caplog.at_level(logging.WARNING, logger="modelport.runtimes.caffe.runtime"):
            CAFFE.load(files["deploy"], LoadOptions(intra_op_threads=2, metadata=info.metadata))
        assert cv2.getNumThreads() == 1
        assert "already 1; a model asking for 2 runs with 1" in caplog.text
    finally:
        cv2.setNumThreads(before)
    with pytest.raises(InvalidInput, match="intra_op_threads must be 0"):
        CAFFE.load(files["deploy"], LoadOptions(intra_op_threads=-1, metadata=info.metadata))


# --- detection and refusals -------------------------------------------------------------------


def test_detect(files: dict[str, Path], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text('layer { name: "x" }')
    table = default_runtimes()

    assert table.detect(files["deploy"]).format == "caffe"
    assert table.detect(files["weights"]).format == "caffe"  # inspect says to put it second
    assert not CAFFE.detect(notes)
    assert not CAFFE.detect(tmp_path)
    assert not CAFFE.detect(tmp_path / "missing.prototxt")
    assert table.get("caffe").extra == "caffe"


def _broken(files: dict[str, Path], tmp_path: Path, kind: str) -> list[Path]:
    """The paths a push of a broken model is given: the prototxt, then the weights."""
    prototxt, weights = files["deploy"], files["weights"]
    if kind == "truncated":
        weights = tmp_path / "weights.caffemodel"
        content = files["weights"].read_bytes()
        weights.write_bytes(content[: len(content) // 2])
    elif kind == "garbage-weights":
        weights = tmp_path / "weights.caffemodel"
        weights.write_bytes(np.random.default_rng(3).bytes(600))  # not even protobuf
    elif kind == "other-weights":
        weights = write_caffemodel(tmp_path / "weights.caffemodel", {"fc1": WEIGHTS["fc1"]})
    elif kind == "mismatched":
        prototxt = tmp_path / "deploy.prototxt"
        prototxt.write_text(tiny_prototxt().replace("num_output: 4", "num_output: 6"))
    elif kind in ("garbage-prototxt", "not-a-netparameter", "binary-prototxt", "training"):
        prototxt = tmp_path / "deploy.prototxt"
        text = {
            "garbage-prototxt": 'name: "tiny"\nlayer { name: "conv1" type: "Convolution"\n',
            "not-a-netparameter": tiny_prototxt().replace('name: "tiny"', 'layer: "tiny"'),
            "training": 'layer { name: "d" type: "Data" top: "data" }\n',
        }.get(kind)
        if text is None:
            prototxt.write_bytes(files["weights"].read_bytes())
        else:
            prototxt.write_text(text)
    elif kind == "unknown-layer":
        prototxt = tmp_path / "deploy.prototxt"
        prototxt.write_text(tiny_prototxt().replace('type: "ReLU"', 'type: "Swish2"'))
    elif kind == "swapped":
        return [weights, prototxt]
    elif kind == "no-weights":
        return [prototxt]
    elif kind == "missing-weights":
        return [prototxt, tmp_path / "nowhere.caffemodel"]
    return [prototxt, weights]


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        (
            "no-weights",
            InvalidInput,
            r"^deploy\.prototxt defines a Caffe network but holds no weights; pass the weights "
            r"file \(weights\.caffemodel\) after the prototxt: modelport push deploy\.prototxt "
            r"weights\.caffemodel --name NAME$",
        ),
        ("swapped", InvalidInput, r"^weights\.caffemodel holds Caffe weights; name the network"),
        ("missing-weights", InvalidModel, r"nowhere\.caffemodel does not exist$"),
        (
            "truncated",
            InvalidModel,
            r"^weights\.caffemodel is not a Caffe weights file \(a binary caffe\.NetParameter\), "
            r"or it is truncated$",
        ),
        ("garbage-weights", InvalidModel, r"^weights\.caffemodel is not a Caffe weights file"),
        ("other-weights", InvalidModel, r"has no weights for layer\(s\) conv1 of deploy"),
        (
            "mismatched",
            InvalidModel,
            r"^OpenCV could not run deploy\.prototxt with weights\.caffemodel \(do these weights "
            r"belong to this network\?\): ",
        ),
        (
            "garbage-prototxt",
            InvalidModel,
            r"^deploy\.prototxt is not a Caffe network definition: line 2, column 7: this '\{' "
            r"is never closed$",
        ),
        (
            "not-a-netparameter",
            InvalidModel,
            r"^deploy\.prototxt is not a Caffe network definition OpenCV can read: line 1, "
            r'column 8: Expected "\{", found ""tiny""\.$',
        ),
        ("binary-prototxt", InvalidModel, r"^deploy\.prototxt is not text, so not a Caffe"),
        ("training", InvalidModel, r"declares no inputs .* not a training one"),
        (
            "unknown-layer",
            UnsupportedFormat,
            r"^deploy\.prototxt uses a layer OpenCV's dnn module cannot run: Can't create layer "
            r"\"relu1\" of type \"Swish2\"$",
        ),
    ],
)
def test_broken_models_are_refused_and_nothing_is_stored(
    sqlite_registry: Registry,
    files: dict[str, Path],
    tmp_path: Path,
    kind: str,
    error: type[ModelportError],
    message: str,
) -> None:
    paths = _broken(files, tmp_path, kind)
    with pytest.raises(error, match=message) as raised:
        sqlite_registry.push(paths, "broken")
    assert "\n" not in str(raised.value)
    assert sqlite_registry.list_models() == []


@pytest.mark.parametrize(
    ("kind", "code"),
    [("no-weights", 2), ("garbage-weights", 6), ("mismatched", 6), ("not-a-netparameter", 6)],
)
def test_the_cli_prints_one_line_whatever_opencv_prints(
    home: Path, files: dict[str, Path], tmp_path: Path, kind: str, code: int
) -> None:
    result = run_cli("push", *_broken(files, tmp_path, kind), "--name", "broken")

    assert result.returncode == code
    assert re.fullmatch(ONE_LINE_ERROR, result.stderr), result.stderr
    assert run_cli("ls", "--json").stdout.strip() == "[]"


def test_the_parser_reads_the_whole_text_format() -> None:
    network = parse_text(
        '# comment\ninput: "a" "b"  # adjacent strings join\n'
        "input_shape < dim: [2, 5] >\n"
        "layer { name: 'in\\'put' type: \"Input\" top: 'x' top: 'y'; "
        "input_param { shape: { dim: 0x3 dim: 4 } } }\n"
    )

    assert network_inputs(network, "net.prototxt") == [
        NetworkInput("ab", (2, 5)),
        NetworkInput("x", (3, 4)),
        NetworkInput("y", (3, 4)),
    ]
    assert network.messages("layer")[0].values("name") == ["in'put"]
    for text, where in [
        ("layer {", "line 1, column 7: this '{' is never closed"),
        ("input: }", "line 1, column 8: expected a value, found '}'"),
        ("input: 'a'\n  @", "line 2, column 3: unexpected character '@'"),
        ("input_dim: [1, 2", "line 1, column 12: this '[' is never closed"),
    ]:
        with pytest.raises(ValueError, match=re.escape(where)):
            parse_text(text)


_WITHOUT_OPENCV = """
import sys
sys.modules["cv2"] = None  # as an install without modelport[caffe] looks to an import
from modelport.cli.main import run
run(sys.argv[1:])
"""


def test_without_opencv_the_cli_names_the_extra(home: Path, files: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OPENCV, "push", str(files["deploy"]),
         str(files["weights"]), "--name", "legacy"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 8, result.stderr
    assert result.stderr == (
        "error: serving Caffe models needs OpenCV's dnn module, which is missing: "
        "pip install 'modelport[caffe]'\n"
    )
    with Registry(Settings(home=home)) as registry:
        assert registry.list_models() == []


def test_conversion_to_onnx_is_refused_clearly(home: Path, files: dict[str, Path]) -> None:
    with Registry(Settings(home=home)) as registry:
        registry.push([files["deploy"], files["weights"]], "legacy")

    result = run_cli("convert", "legacy@1", "--to", "onnx")

    assert result.returncode == 5
    assert result.stderr.startswith(
        "error: legacy@1: there is no converter for 'caffe' models; modelport converts these "
        "formats to ONNX: "
    )
    assert re.fullmatch(ONE_LINE_ERROR, result.stderr)


# --- serving ----------------------------------------------------------------------------------


def _infer(client: httpx.Client, url: str, images: np.ndarray[Any, Any]) -> Any:
    body = {
        "inputs": [
            {
                "name": "data",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ]
    }
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "prob" and output["datatype"] == "FP32"
    return np.array(output["data"], np.float32).reshape(output["shape"])


def test_served_over_v2_rest(home: Path, files: dict[str, Path]) -> None:
    with Registry(Settings(home=home)) as registry:
        registry.push([files["deploy"], files["weights"]], "legacy", aliases=["production"])

    with (
        running_server(home, ["legacy@production"], ["--no-grpc"]) as server,
        httpx.Client(timeout=30) as client,
    ):
        url = f"{server.http_url}/v2/models/legacy/infer"
        np.testing.assert_allclose(_infer(client, url, IMAGES), EXPECTED, rtol=1e-4, atol=1e-6)

        def one_row(index: int) -> Any:
            return _infer(client, url, IMAGES[index % 6 : index % 6 + 1])

        with ThreadPoolExecutor(max_workers=8) as pool:
            rows = list(pool.map(one_row, range(24)))
        for index, row in enumerate(rows):
            np.testing.assert_allclose(row[0], EXPECTED[index % 6], rtol=1e-4, atol=1e-6)
        metadata = client.get(f"{server.http_url}/v2/models/legacy").json()
    assert metadata["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert server.proc.returncode == 0
