"""The TensorFlow runtimes (``keras``, ``tf_savedmodel``) against real Keras 3 networks saved
the way Keras saves them: signatures, predictions equal to Keras' own, conversion to ONNX with
parity, the refusals (Python code in a ``.keras``, broken files, no TensorFlow), and serving
through a real server over REST JSON and gRPC."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import np_to_triton_dtype

from modelport import Registry, Settings
from modelport.conversion import convert
from modelport.errors import InvalidInput, InvalidModel
from modelport.runtimes import CheckedModel, LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.tensorflow.runtime import KerasRuntime, SavedModelRuntime
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.keras_models import (
    digits,
    digits_cnn,
    export_saved_model,
    lambda_model,
    predict,
    save_keras,
    two_heads,
)
from tests.serving_fixtures import predict_in_process, running_server

pytestmark = [
    # Keras 3.15 saves variables with np.array(variable), which TensorFlow 2.21's variables
    # answer without the copy keyword NumPy 2 asks for.
    pytest.mark.filterwarnings(
        r"ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

KERAS = KerasRuntime()
SAVED = SavedModelRuntime()
IMAGES = digits(8)
RNG = np.random.default_rng(0)
FEATURES = RNG.standard_normal((5, 4)).astype(np.float32)
BIAS = RNG.standard_normal((5, 3)).astype(np.float32)
HEADS_IN = {"features": FEATURES, "bias": BIAS}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every model the tests use, built and saved once per module."""
    root = tmp_path_factory.mktemp("keras")
    cnn, heads = digits_cnn(), two_heads()
    return {
        "cnn.keras": save_keras(cnn, root / "cnn.keras"),
        "cnn_saved": export_saved_model(cnn, root / "cnn_saved"),
        "heads.keras": save_keras(heads, root / "heads.keras"),
        "heads_saved": export_saved_model(heads, root / "heads_saved"),
        "lambda.keras": save_keras(lambda_model(), root / "lambda.keras"),
    }


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    """What Keras itself predicts for the test inputs."""
    return {"cnn": predict(digits_cnn(), IMAGES), "heads": predict(two_heads(), HEADS_IN)}


@pytest.fixture
def sqlite_registry(home: Path) -> Iterator[Registry]:
    with Registry(Settings(home=home)) as registry:
        yield registry


def spec(name: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, DataType.FP32, shape)


CNN_KERAS = Signature((spec("image", (-1, 8, 8, 1)),), (spec("digit", (-1, 10)),))
HEADS = Signature(
    (spec("bias", (-1, 3)), spec("features", (-1, 4))),
    (spec("scores", (-1, 3)), spec("total", (-1, 3))),
)


def test_keras_archive_predicts_like_keras(
    sqlite_registry: Registry, files: dict[str, Path], expected: dict[str, Any]
) -> None:
    version = sqlite_registry.push(files["cnn.keras"], "cnn")

    assert version.format == "keras"
    assert version.signature == CNN_KERAS
    assert version.metadata["safe_mode"] is True
    assert not version.trust_pickle
    model = sqlite_registry.load("cnn")
    for rows in (1, 8):
        result = model.predict({"image": IMAGES[:rows]})
        assert result["digit"].dtype == np.float32
        np.testing.assert_allclose(result["digit"], expected["cnn"][:rows], rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 8, 8, 1\], received \[2, 8, 8\]"):
        model.predict({"image": IMAGES[:2, :, :, 0]})
    with pytest.raises(InvalidInput, match=r"unknown output 'logits'; the model gives 'digit'"):
        model.predict({"image": IMAGES}, ["logits"])
    model.close()


def test_saved_model_through_the_cli(
    home: Path, tmp_path: Path, files: dict[str, Path], expected: dict[str, Any]
) -> None:
    inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, image=IMAGES)

    pushed = run_cli("push", files["cnn_saved"], "--name", "mnist", "--json")
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    assert record["format"] == "tf_savedmodel"
    assert Signature.from_dict(record["signature"]) == Signature(
        CNN_KERAS.inputs, (spec("output_0", (-1, 10)),)
    )
    predicted = run_cli("predict", "mnist", "--input", inputs, "--output", outputs)
    assert predicted.returncode == 0, predicted.stderr
    with np.load(outputs) as saved:
        np.testing.assert_allclose(saved["output_0"], expected["cnn"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["heads.keras", "heads_saved"])
def test_dict_inputs_and_outputs_keep_their_names(
    files: dict[str, Path], expected: dict[str, Any], name: str
) -> None:
    runtime = KERAS if name.endswith(".keras") else SAVED
    info = runtime.inspect(files[name], PushOptions())
    assert info.signature == HEADS
    model = CheckedModel(runtime.load(files[name], LoadOptions(metadata=info.metadata)))

    result = model.predict(HEADS_IN)
    assert list(result) == ["scores", "total"]
    for output in ("scores", "total"):
        np.testing.assert_allclose(result[output], expected["heads"][output], rtol=1e-5, atol=1e-6)
    assert list(model.predict(HEADS_IN, ["total"])) == ["total"]
    with pytest.raises(InvalidInput, match=r"missing input 'bias'"):
        model.predict({"features": FEATURES})


@pytest.mark.parametrize("name", ["cnn.keras", "heads_saved"])
def test_conversion_to_onnx_passes_parity(
    sqlite_registry: Registry, files: dict[str, Path], expected: dict[str, Any], name: str
) -> None:
    source = sqlite_registry.push(files[name], "model")

    report = convert(sqlite_registry, "model@1", to="onnx")

    version = report.version
    assert version.format == "onnx"
    assert version.signature.output_names() == source.signature.output_names()
    assert version.lineage.parent == "model@1"
    assert version.lineage.operation == "convert"
    params = version.lineage.parameters
    assert params["from"] == source.format
    assert params["converter"] == ("keras" if name.endswith(".keras") else "tf2onnx")
    metrics = version.metrics
    assert metrics["parity.passed"] is True
    for output in source.signature.output_names():
        assert 0 <= metrics[f"parity.max_abs.{output}"] < 1e-4
        assert f"parity.max_rel.{output}" in metrics
    onnx_model = sqlite_registry.load("model@2")
    if name == "cnn.keras":
        result = onnx_model.predict({"image": IMAGES})["digit"]
        np.testing.assert_allclose(result, expected["cnn"], rtol=1e-4, atol=1e-5)
    else:
        result = onnx_model.predict(HEADS_IN)
        np.testing.assert_allclose(
            result["total"], expected["heads"]["total"], rtol=1e-4, atol=1e-5
        )


def test_python_code_in_an_archive_needs_trust(
    home: Path, sqlite_registry: Registry, files: dict[str, Path]
) -> None:
    refused = run_cli("push", files["lambda.keras"], "--name", "doubler")
    assert refused.returncode == 6
    assert refused.stderr.strip() == (
        "error: lambda.keras: the model holds Python code (e.g. a Lambda layer) that Keras runs "
        "only with safe_mode=False; modelport loads it only with --trust-pickle (add it if you "
        "trust the file's source), or rebuild the model from plain Keras layers, or convert it "
        "to ONNX where you trust it and push the .onnx file"
    )
    assert sqlite_registry.list_models() == []

    version = sqlite_registry.push(files["lambda.keras"], "doubler", trust_pickle=True)
    assert version.trust_pickle and version.metadata["safe_mode"] is False
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = sqlite_registry.load("doubler").predict({"rows": rows})
    np.testing.assert_array_equal(result["doubled"], rows * 2)


def _damaged(files: dict[str, Path], tmp_path: Path, kind: str) -> Path:
    if kind == "garbage":
        path = tmp_path / "model.keras"
        path.write_bytes(b"not a zip archive at all" * 10)
        return path
    if kind in ("no-weights", "bad-weights", "bad-config"):
        path = tmp_path / "model.keras"
        with zipfile.ZipFile(files["cnn.keras"]) as source, zipfile.ZipFile(path, "w") as target:
            for name in source.namelist():
                data = source.read(name)
                if name == "model.weights.h5" and kind == "no-weights":
                    continue
                if name == "model.weights.h5" and kind == "bad-weights":
                    data = data[: len(data) // 2]
                if name == "config.json" and kind == "bad-config":
                    data = data[:20]
                target.writestr(name, data)
        return path
    path = shutil.copytree(files["cnn_saved"], tmp_path / "saved")
    if kind == "no-variables":
        shutil.rmtree(path / "variables")
    elif kind == "truncated-graph":
        graph = path / "saved_model.pb"
        graph.write_bytes(graph.read_bytes()[:200])
    elif kind == "truncated-variables":
        data = path / "variables" / "variables.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:100])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("garbage", r"^model\.keras is not a Keras archive \(not a zip file, or truncated\)"),
        ("no-weights", r"^model\.keras is not a complete Keras archive .*: no model\.weights\.h5$"),
        ("bad-weights", r"^model\.keras could not be loaded as a Keras model: .*truncated file"),
        ("bad-config", r"^model\.keras: config\.json is damaged"),
        ("no-variables", r"^saved is not a complete SavedModel: no variables/variables\.index"),
        ("truncated-graph", r"^saved: saved_model\.pb is damaged or truncated"),
        ("truncated-variables", r"^saved could not be loaded as a SavedModel: "),
    ],
)
def test_broken_models_are_refused_and_nothing_is_stored(
    sqlite_registry: Registry, files: dict[str, Path], tmp_path: Path, kind: str, message: str
) -> None:
    path = _damaged(files, tmp_path, kind)
    with pytest.raises(InvalidModel, match=message) as raised:
        sqlite_registry.push(path, "broken")
    assert "\n" not in str(raised.value)
    assert sqlite_registry.list_models() == []


def test_detect_is_cheap_and_claims_only_its_own(files: dict[str, Path], tmp_path: Path) -> None:
    table = default_runtimes()
    assert table.detect(files["cnn.keras"]).format == "keras"
    assert table.detect(files["cnn_saved"]).format == "tf_savedmodel"
    (tmp_path / "notes.txt").write_text("hello")
    assert not KERAS.detect(tmp_path / "notes.txt")
    assert not SAVED.detect(tmp_path)
    assert not SAVED.detect(files["cnn.keras"])
    assert not KERAS.detect(files["cnn_saved"])


def test_negative_thread_counts_are_refused(files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match=r"intra_op_threads must be 0"):
        KERAS.load(files["cnn.keras"], LoadOptions(intra_op_threads=-1))


_WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # as an install without modelport[tensorflow] looks
sys.modules["keras"] = None
sys.argv = ["modelport", *sys.argv[1:]]
from modelport.cli.main import run
run()
"""


@pytest.mark.parametrize("name", ["cnn.keras", "cnn_saved"])
def test_without_tensorflow_the_error_names_the_extra(
    home: Path, sqlite_registry: Registry, files: dict[str, Path], name: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TENSORFLOW, "push", str(files[name]), "--name", "m"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 8, result.stderr
    assert result.stderr.strip() == (
        "error: serving Keras and TensorFlow models needs TensorFlow, which is missing: "
        "pip install 'modelport[tensorflow]'"
    )
    assert sqlite_registry.list_models() == []


def test_served_over_rest_json_and_grpc(
    home: Path, files: dict[str, Path], expected: dict[str, Any]
) -> None:
    with Registry(Settings(home=home)) as registry:
        registry.push(files["cnn.keras"], "digits")
        registry.push(files["heads_saved"], "heads")
    in_process = predict_in_process(home, "digits", {"image": IMAGES})["digit"]
    np.testing.assert_allclose(in_process, expected["cnn"], rtol=1e-5, atol=1e-6)

    with (
        running_server(home, ["digits", "heads"], ready_timeout=60) as server,
        httpx.Client(timeout=30) as client,
    ):
        body = {
            "inputs": [
                {"name": name, "shape": list(array.shape), "datatype": "FP32",
                 "data": array.ravel().tolist()}
                for name, array in HEADS_IN.items()
            ]
        }  # fmt: skip
        response = client.post(f"{server.http_url}/v2/models/heads/infer", json=body)
        assert response.status_code == 200, response.text
        outputs = {item["name"]: item for item in response.json()["outputs"]}
        assert set(outputs) == {"scores", "total"}
        for name, item in outputs.items():
            got = np.array(item["data"], np.float32).reshape(item["shape"])
            np.testing.assert_allclose(got, expected["heads"][name], rtol=1e-5, atol=1e-5)

        with triton.InferenceServerClient(server.grpc_target) as grpc_client:
            item = triton.InferInput("image", list(IMAGES.shape), np_to_triton_dtype(IMAGES.dtype))
            item.set_data_from_numpy(IMAGES)
            answer = grpc_client.infer("digits", [item])
            np.testing.assert_allclose(answer.as_numpy("digit"), in_process, rtol=1e-6)
    assert server.proc.returncode == 0
