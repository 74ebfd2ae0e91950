"""The MLflow runtime against real MLflow model directories: the ONNX and skops flavors served
natively, pickled flavors refused unless trusted (and then served through mlflow.pyfunc),
broken directories refused in one line, a real server, and the missing extra.

The pyfunc tests need pandas (``mlflow.pyfunc`` imports it; ``mlflow-skinny`` does not
install it): they are skipped where it is missing, and the test that pins what happens
without it runs instead.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import pytest
from sklearn.linear_model import LogisticRegression

from modelport import Registry
from modelport.errors import InvalidInput, InvalidModel, UnsupportedFormat
from modelport.runtimes import CheckedModel, LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.mlflow.runtime import MLflowRuntime
from modelport.runtimes.mlflow.signature import read_mlmodel, recorded_signature
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.mlflow_models import (
    HAVE_PANDAS,
    IRIS_SIGNATURE,
    save_onnx,
    save_python_model,
    save_sklearn,
    write_mlmodel,
)
from tests.onnx_models import make_iris_onnx
from tests.serving_fixtures import cli_env, predict_in_process, running_server
from tests.tabular_models import MakesDirectory, features, target

IRIS = features("iris")
RUNTIME = MLflowRuntime()
needs_pandas = pytest.mark.skipif(not HAVE_PANDAS, reason="mlflow.pyfunc needs pandas")
PYFUNC_REFUSAL = (
    "{name} is an MLflow model served through mlflow.pyfunc ({how}), and loading it unpickles "
    "code from the directory; push it with --trust-pickle if you trust where it came from, or "
    "save it in a safe format: mlflow.sklearn.save_model(..., serialization_format='skops') "
    "for scikit-learn models, or the ONNX flavor (mlflow.onnx.save_model)"
)
SKLEARN_HOW = "flavors python_function, sklearn; sklearn serialized with cloudpickle"
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def classifier() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(features("iris", np.float64), target("iris"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, classifier: LogisticRegression) -> Path:
    directory = tmp_path_factory.mktemp("mlflow")
    onnx_file = make_iris_onnx(directory / "iris.onnx", zipmap=False)
    with warnings.catch_warnings():  # MLflow's advice on type hints and environments
        warnings.simplefilter("ignore")
        save_onnx(onnx_file, directory / "onnx_model")
        save_sklearn(classifier, directory / "skops_model", "skops")
        save_sklearn(classifier, directory / "pickled_model", "cloudpickle")
    return directory


def stored_nothing(registry: Registry, home: Path) -> bool:
    blobs = list((home / "artifacts" / "blobs").glob("*/*"))
    return registry.list_models() == [] and blobs == []


def mlflow_predict(directory: Path, x: np.ndarray[Any, Any]) -> Any:
    """What MLflow itself predicts for ``x`` (pandas only)."""
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.load_model(str(directory)).predict(x)


# --- native flavors -----------------------------------------------------------------------------


def test_mlflow_directories_are_detected_before_what_they_wrap(models: Path) -> None:
    runtimes = default_runtimes()
    for name in ("onnx_model", "skops_model", "pickled_model"):
        assert runtimes.detect(models / name).format == "mlflow"
    assert runtimes.detect(models / "iris.onnx").format == "onnx"
    assert not RUNTIME.detect(models / "iris.onnx")
    assert not RUNTIME.detect(models)  # MLmodel must be in the directory itself


def test_the_xgboost_flavor_is_served_by_the_xgboost_runtime(tmp_path: Path) -> None:
    xgboost_mlflow = pytest.importorskip("mlflow.xgboost")
    from tests.tabular_models import xgboost_model

    booster = xgboost_model("multi:softprob")
    with warnings.catch_warnings():  # MLflow's advice on type hints and environments
        warnings.simplefilter("ignore")
        xgboost_mlflow.save_model(booster, str(tmp_path / "xgb"))
    info = RUNTIME.inspect(tmp_path / "xgb", PushOptions())
    assert info.metadata["serving"] == "xgboost"
    assert info.metadata["native"]["objective"] == "multi:softprob"
    options = LoadOptions(metadata=info.metadata)
    with default_runtimes().load("mlflow", tmp_path / "xgb", options) as model:
        result = model.predict({"input": IRIS})
    np.testing.assert_array_equal(result["label"], booster.predict(IRIS))
    np.testing.assert_allclose(result["probabilities"], booster.predict_proba(IRIS), rtol=1e-6)


@sqlite_only
def test_the_onnx_flavor_is_served_by_onnxruntime(registry: Registry, models: Path) -> None:
    version = registry.push(models / "onnx_model", "iris")

    assert (version.format, version.trust_pickle, version.entry) == ("mlflow", False, ".")
    assert version.metadata["serving"] == "onnx"
    assert version.metadata["entry"] == "model.onnx"
    assert version.metadata["flavors"] == ["onnx", "python_function"]
    assert version.metadata["mlflow_version"]
    assert {"MLmodel", "model.onnx"} <= {entry.path for entry in version.files}
    assert version.signature == Signature(
        (TensorSpec("input", DataType.FP32, (-1, 4)),),
        (
            TensorSpec("label", DataType.INT64, (-1,)),
            TensorSpec("probabilities", DataType.FP32, (-1, 3)),
        ),
    )
    result = registry.load("iris").predict({"input": IRIS})

    session = onnxruntime.InferenceSession(str(models / "iris.onnx"))
    label, probabilities = session.run(None, {"input": IRIS})
    np.testing.assert_array_equal(result["label"], label)
    np.testing.assert_allclose(result["probabilities"], probabilities, rtol=1e-6)
    if HAVE_PANDAS:
        expected = mlflow_predict(models / "onnx_model", IRIS)
        np.testing.assert_array_equal(result["label"], expected["label"])


@sqlite_only
def test_the_skops_sklearn_flavor_is_served_by_skops(
    registry: Registry, models: Path, classifier: LogisticRegression
) -> None:
    version = registry.push(models / "skops_model", "churn")

    assert (version.format, version.trust_pickle) == ("mlflow", False)
    assert version.metadata["serving"] == "skops"
    assert version.metadata["entry"] == "model.skops"
    assert version.metadata["native"]["estimator"].endswith("LogisticRegression")
    assert [spec.name for spec in version.signature.outputs] == ["label", "probabilities"]
    result = registry.load("churn").predict({"input": IRIS})

    np.testing.assert_array_equal(result["label"], classifier.predict(IRIS))
    np.testing.assert_allclose(result["probabilities"], classifier.predict_proba(IRIS), atol=1e-6)
    if HAVE_PANDAS:
        np.testing.assert_array_equal(result["label"], mlflow_predict(models / "skops_model", IRIS))


# --- pickled flavors ----------------------------------------------------------------------------


@sqlite_only
def test_pickled_flavors_are_refused_unless_trusted(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    sklearn_dir = save_sklearn(MakesDirectory(marker), tmp_path / "evil_sklearn", "cloudpickle")
    custom_dir = save_python_model(MakesDirectory(marker), tmp_path / "evil_custom")
    for directory, how in (
        (sklearn_dir, SKLEARN_HOW),
        (custom_dir, "flavors python_function"),
    ):
        with pytest.raises(InvalidModel) as refused:
            registry.push(directory, "churn")
        assert str(refused.value) == PYFUNC_REFUSAL.format(name=directory.name, how=how)
    assert not marker.exists()
    assert stored_nothing(registry, home)


@needs_pandas
@sqlite_only
def test_a_trusted_pickled_sklearn_flavor_predicts_as_mlflow(
    registry: Registry, models: Path, classifier: LogisticRegression
) -> None:
    version = registry.push(models / "pickled_model", "churn", trust_pickle=True)

    assert (version.format, version.trust_pickle) == ("mlflow", True)
    assert version.metadata["serving"] == "pyfunc"
    assert version.signature == Signature(
        (TensorSpec("input", DataType.FP32, (-1, 4)),),
        (TensorSpec("predictions", DataType.INT64, (-1,)),),
    )
    result = registry.load("churn").predict({"input": IRIS})
    expected = mlflow_predict(models / "pickled_model", IRIS)
    np.testing.assert_array_equal(result["predictions"], expected)
    np.testing.assert_array_equal(result["predictions"], classifier.predict(IRIS))


@needs_pandas
def test_a_custom_python_model_predicts_as_mlflow(tmp_path: Path) -> None:
    with warnings.catch_warnings():  # MLflow's advice on type hints, at import and class creation
        warnings.simplefilter("ignore")
        import mlflow.pyfunc

        class RowSums(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
            def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
                return np.asarray(model_input).sum(axis=1)

        directory = save_python_model(RowSums(), tmp_path / "custom")
    with pytest.raises(InvalidInput, match="custom records no signature and no input example"):
        RUNTIME.inspect(directory, PushOptions(trust_pickle=True))
    example = {"x": IRIS[:3]}
    model = load_pushed(directory, PushOptions(trust_pickle=True, example=example))

    assert model.signature.outputs == (TensorSpec("predictions", DataType.FP32, (-1,)),)
    result = model.predict({"x": IRIS})["predictions"]
    np.testing.assert_allclose(result, mlflow_predict(directory, IRIS), rtol=1e-6)


def load_pushed(directory: Path, options: PushOptions) -> Any:
    """What ``Registry.load`` does after ``Registry.push``: inspect, then load with the record."""
    from modelport.runtimes import LoadOptions

    info = RUNTIME.inspect(directory, options)
    return CheckedModel(
        RUNTIME.load(directory, LoadOptions(metadata=info.metadata, trust_pickle=True))
    )


# --- signatures recorded in MLmodel -------------------------------------------------------------


def test_column_signatures_become_one_tensor_or_one_per_column(tmp_path: Path) -> None:
    flavors = {"python_function": {"loader_module": "mlflow.sklearn"}}
    same = [{"type": "double", "name": n, "required": True} for n in ("a", "b", "c")]
    mixed = [{"type": "long", "name": "age"}, {"type": "string", "name": "city"}]
    outputs = [{"type": "long"}]

    frame = recorded_signature(read_mlmodel(write_mlmodel(tmp_path / "same", flavors, {
        "inputs": same, "outputs": outputs})))  # fmt: skip
    columns = recorded_signature(read_mlmodel(write_mlmodel(tmp_path / "mixed", flavors, {
        "inputs": mixed, "outputs": outputs})))  # fmt: skip
    tensors = recorded_signature(read_mlmodel(write_mlmodel(tmp_path / "tensors", flavors, {
        "inputs": IRIS_SIGNATURE["inputs"], "outputs": IRIS_SIGNATURE["outputs"]})))  # fmt: skip

    assert frame is not None and columns is not None and tensors is not None
    predictions = (TensorSpec("predictions", DataType.INT64, (-1,)),)
    assert (frame.input_kind, frame.columns) == ("frame", ("a", "b", "c"))
    assert frame.signature == Signature((TensorSpec("input", DataType.FP64, (-1, 3)),), predictions)
    assert columns.input_kind == "columns"
    assert columns.signature.inputs == (
        TensorSpec("age", DataType.INT64, (-1,)),
        TensorSpec("city", DataType.BYTES, (-1,)),
    )
    assert tensors.input_kind == "array"
    assert tensors.signature == Signature(
        (TensorSpec("input", DataType.FP32, (-1, 4)),), predictions
    )


# --- broken directories -------------------------------------------------------------------------


def _garbage(directory: Path) -> None:
    directory.mkdir()
    (directory / "MLmodel").write_text("flavors: [unclosed\n  : : :")


def _a_list(directory: Path) -> None:
    directory.mkdir()
    (directory / "MLmodel").write_text("- just\n- a list\n")


def _no_flavors(directory: Path) -> None:
    write_mlmodel(directory, {})


def _missing_file(directory: Path) -> None:
    write_mlmodel(directory, {"onnx": {"data": "model.onnx"}})


def _outside(directory: Path) -> None:
    write_mlmodel(directory, {"onnx": {"data": "../iris.onnx"}})


def _unknown_flavor(directory: Path) -> None:
    write_mlmodel(directory, {"h2o": {"data": "model.h2o"}})


@sqlite_only
@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (_garbage, InvalidModel, "broken/MLmodel is not a readable YAML file: "),
        (_a_list, InvalidModel, "broken/MLmodel is not an MLflow model description"),
        (_no_flavors, InvalidModel, "broken/MLmodel lists no flavors;"),
        (
            _missing_file,
            InvalidModel,
            "broken/MLmodel: the 'onnx' flavor names model.onnx, which is missing",
        ),
        (_outside, InvalidModel, "broken/MLmodel: the 'onnx' flavor names ../iris.onnx, outside"),
        (
            _unknown_flavor,
            UnsupportedFormat,
            "broken: MLflow flavors h2o have no python_function flavor; modelport serves",
        ),
    ],
)
def test_broken_directories_are_refused_in_one_line(
    registry: Registry,
    home: Path,
    tmp_path: Path,
    make: Callable[[Path], None],
    error: type[Exception],
    message: str,
) -> None:
    (tmp_path / "iris.onnx").write_bytes(b"")
    make(tmp_path / "broken")
    with pytest.raises(error) as refused:
        registry.push(tmp_path / "broken", "broken", trust_pickle=True)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)
    assert stored_nothing(registry, home)


def test_a_bad_input_is_refused_by_the_native_runtime(models: Path) -> None:
    model = load_pushed(models / "onnx_model", PushOptions())
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 4\], received \[2, 3\]"):
        model.predict({"input": IRIS[:2, :3]})


# --- the CLI, a real server, the missing extra ------------------------------------------------


def test_cli_refuses_pickles_serves_native_flavors_and_does_not_convert(
    home: Path, models: Path
) -> None:
    refused = run_cli("push", models / "pickled_model", "--name", "churn")
    assert refused.returncode == 6
    message = PYFUNC_REFUSAL.format(name="pickled_model", how=SKLEARN_HOW)
    assert refused.stderr == f"error: {message}\n"

    for name in ("onnx_model", "skops_model"):
        pushed = run_cli("push", models / name, "--name", name)
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stdout.startswith(f"pushed {name}@1 (mlflow,")

    x = IRIS[::15]
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    with running_server(home, ["onnx_model", "skops_model"]) as server:
        responses = {
            name: httpx.post(f"{server.http_url}/v2/models/{name}/infer", json=body, timeout=30)
            for name in ("onnx_model", "skops_model")
        }
    assert server.proc.returncode == 0, server.output()
    for name, response in responses.items():
        assert response.status_code == 200, response.text
        outputs = {output["name"]: output for output in response.json()["outputs"]}
        expected = predict_in_process(home, name, {"input": x})
        assert set(outputs) == set(expected)
        for key, value in expected.items():
            received = np.array(outputs[key]["data"], value.dtype).reshape(outputs[key]["shape"])
            np.testing.assert_allclose(received, value, rtol=1e-6)

    converted = run_cli("convert", "skops_model", "--to", "onnx")
    assert converted.returncode == 5
    assert converted.stderr.startswith(
        "error: skops_model@1: there is no converter for 'mlflow' models; modelport converts"
    )


@pytest.mark.parametrize(
    ("blocked", "message"),
    [
        ("mlflow", "serving MLflow models through mlflow.pyfunc needs mlflow"),
        ("pandas", "serving MLflow models through mlflow.pyfunc needs mlflow and pandas"),
        ("yaml", "reading MLflow models needs PyYAML"),
    ],
)
def test_a_missing_extra_says_what_to_install(
    models: Path, tmp_path: Path, blocked: str, message: str
) -> None:
    script = (
        f"import sys; sys.modules[{blocked!r}] = None\nfrom modelport.cli.main import run\nrun()\n"
    )
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-c", script, "push", str(models / "pickled_model"), "--name", "m",
         "--trust-pickle"],
        capture_output=True, text=True, env=cli_env(home), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 8, result.stderr
    assert result.stderr == f"error: {message}: pip install 'modelport[mlflow]'\n"
    assert result.stdout == ""
