"""The XGBoost and LightGBM runtimes against real boosters trained on scikit-learn's data sets:
detection, signatures by objective, predictions equal to the frameworks' own, a real server,
and the refusals (broken files, files that only look like models, missing frameworks)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelport import Registry, Settings
from modelport.errors import InvalidInput, InvalidModel, UnsupportedFormat
from modelport.runtimes import CheckedModel, LoadOptions, PushOptions, default_runtimes
from modelport.runtimes.boosting.runtime import LightGBMRuntime, XGBoostRuntime
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.serving_fixtures import cli_env, predict_in_process, running_server
from tests.tabular_models import (
    LIGHTGBM_OBJECTIVES,
    XGBOOST_OBJECTIVES,
    features,
    lightgbm_model,
    save_lightgbm,
    save_xgboost,
    xgboost_early_stopped,
    xgboost_model,
)

XGBOOST = XGBoostRuntime()
LIGHTGBM = LightGBMRuntime()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("boosters")
    for objective in XGBOOST_OBJECTIVES:
        for suffix in (".json", ".ubj"):
            save_xgboost(xgboost_model(objective), directory / f"{objective}{suffix}")
    save_xgboost(xgboost_early_stopped(), directory / "early.json")
    for objective in LIGHTGBM_OBJECTIVES:
        save_lightgbm(lightgbm_model(objective), directory / f"{objective}.txt")
    return directory


def load(runtime: Any, path: Path, options: PushOptions | None = None, threads: int = 0) -> Any:
    """What ``Registry.load`` does after ``Registry.push``: inspect, then load with the record."""
    info = runtime.inspect(path, options or PushOptions())
    return CheckedModel(
        runtime.load(path, LoadOptions(intra_op_threads=threads, metadata=info.metadata))
    )


def stored_nothing(registry: Registry, home: Path) -> bool:
    blobs = list((home / "artifacts" / "blobs").glob("*/*"))
    return registry.list_models() == [] and blobs == []


def classifier_outputs(classes: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("label", DataType.INT64, (-1,)),
        TensorSpec("probabilities", DataType.FP32, (-1, classes)),
    )


# --- XGBoost ----------------------------------------------------------------------------------


def test_push_an_xgboost_classifier(registry: Registry, models: Path) -> None:
    version = registry.push(models / "binary:logistic.json", "fraud")

    assert (version.format, version.trust_pickle) == ("xgboost", False)
    assert version.signature == Signature(
        (TensorSpec("input", DataType.FP32, (-1, 30)),), classifier_outputs(2)
    )
    assert version.metadata["objective"] == "binary:logistic"
    assert version.metadata["num_features"] == 30
    x = features("breast_cancer")
    result = registry.load("fraud").predict({"input": x})
    classifier = xgboost_model("binary:logistic")
    np.testing.assert_array_equal(result["label"], classifier.predict(x))
    np.testing.assert_allclose(result["probabilities"], classifier.predict_proba(x), rtol=1e-6)


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
@pytest.mark.parametrize(
    ("objective", "outputs"),
    [
        ("binary:logistic", classifier_outputs(2)),
        ("multi:softprob", classifier_outputs(3)),
        ("multi:softmax", classifier_outputs(3)),
        ("reg:squarederror", (TensorSpec("prediction", DataType.FP32, (-1,)),)),
        ("binary:logitraw", (TensorSpec("prediction", DataType.FP32, (-1, -1)),)),
    ],
)
def test_xgboost_outputs_follow_the_objective(
    models: Path, suffix: str, objective: str, outputs: tuple[TensorSpec, ...]
) -> None:
    model = load(XGBOOST, models / f"{objective}{suffix}", threads=1)
    assert model.signature.outputs == outputs
    trained = xgboost_model(objective)
    x = features(XGBOOST_OBJECTIVES[objective])

    result = model.predict({"input": x})

    if outputs[0].name == "label":
        np.testing.assert_array_equal(result["label"], trained.predict(x))
        assert result["probabilities"].dtype == np.float32
        np.testing.assert_allclose(result["probabilities"].sum(axis=1), 1, rtol=1e-5)
    if objective == "multi:softmax":  # the wrapper gives no probabilities for softmax
        margins = trained.get_booster().inplace_predict(x, predict_type="margin")
        exp = np.exp(margins - margins.max(axis=1, keepdims=True))
        softmax = exp / exp.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(result["probabilities"], softmax, rtol=1e-6)
    elif outputs[0].name == "label":
        np.testing.assert_allclose(result["probabilities"], trained.predict_proba(x), rtol=1e-6)
    else:
        raw = objective == "binary:logitraw"  # its classifier predicts labels from the margin
        expected = trained.predict(x, output_margin=raw)
        np.testing.assert_array_equal(result["prediction"].reshape(expected.shape), expected)


def test_xgboost_uses_the_best_iteration_early_stopping_recorded(models: Path) -> None:
    trained = xgboost_early_stopped()
    assert trained.best_iteration < trained.get_booster().num_boosted_rounds() - 1
    info = XGBOOST.inspect(models / "early.json", PushOptions())
    assert info.metadata["best_iteration"] == trained.best_iteration
    x = features("breast_cancer")

    result = load(XGBOOST, models / "early.json").predict({"input": x})

    np.testing.assert_allclose(result["probabilities"], trained.predict_proba(x), rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("config.json", '{"inputs": [1, 2]}', UnsupportedFormat, "file of no known format"),
        ("list.json", "[1, 2, 3]", UnsupportedFormat, "file of no known format"),
        ("cut.json", None, InvalidModel, "cut.json is not a valid XGBoost model: "),
        ("noise.ubj", "{not ubjson", InvalidModel, "noise.ubj is not a valid XGBoost model: "),
        ("empty.json", '{"learner": {}}', InvalidModel, "empty.json is not a valid XGBoost model"),
    ],
)
def test_broken_or_foreign_json_stores_nothing(
    registry: Registry,
    home: Path,
    models: Path,
    tmp_path: Path,
    name: str,
    content: str | None,
    error: type[Exception],
    message: str,
) -> None:
    path = tmp_path / name
    whole = (models / "multi:softprob.json").read_text()
    path.write_text(whole[: len(whole) // 2] if content is None else content)
    with pytest.raises(error) as refused:
        registry.push(path, "fraud")
    assert str(refused.value).startswith((message, f"{path}: {message}"))
    assert "\n" not in str(refused.value)
    assert stored_nothing(registry, home)


def test_xgboost_detection_reads_only_the_start(models: Path, tmp_path: Path) -> None:
    pretty = tmp_path / "pretty.json"
    pretty.write_text(
        json.dumps(json.loads((models / "multi:softprob.json").read_text()), indent=2)
    )
    assert default_runtimes().detect(pretty).format == "xgboost"
    assert default_runtimes().detect(models / "multi:softprob.ubj").format == "xgboost"
    late = tmp_path / "late.json"
    late.write_text(json.dumps({"version": [3, 0], "learner": {}}))
    assert not XGBOOST.detect(late)
    assert not XGBOOST.detect(tmp_path)


# --- LightGBM ---------------------------------------------------------------------------------


def test_push_a_lightgbm_classifier(registry: Registry, models: Path) -> None:
    version = registry.push(models / "multiclass.txt", "species")

    assert (version.format, version.trust_pickle) == ("lightgbm", False)
    assert version.signature == Signature(
        (TensorSpec("input", DataType.FP64, (-1, 4)),), classifier_outputs(3)
    )
    assert version.metadata["objective"] == "multiclass num_class:3"
    x = features("iris", np.float64)
    result = registry.load("species").predict({"input": x})
    classifier = lightgbm_model("multiclass")
    np.testing.assert_array_equal(result["label"], classifier.predict(x))
    np.testing.assert_allclose(result["probabilities"], classifier.predict_proba(x), rtol=1e-6)


@pytest.mark.parametrize(
    ("objective", "outputs"),
    [
        ("binary", classifier_outputs(2)),
        ("multiclass", classifier_outputs(3)),
        ("regression", (TensorSpec("prediction", DataType.FP64, (-1,)),)),
        ("cross_entropy", (TensorSpec("prediction", DataType.FP64, (-1, -1)),)),
    ],
)
def test_lightgbm_outputs_follow_the_objective(
    models: Path, objective: str, outputs: tuple[TensorSpec, ...]
) -> None:
    model = load(LIGHTGBM, models / f"{objective}.txt", threads=1)
    assert model.signature.outputs == outputs
    trained = lightgbm_model(objective)
    x = features(LIGHTGBM_OBJECTIVES[objective], np.float64)

    result = model.predict({"input": x})

    if outputs[0].name == "label":
        np.testing.assert_array_equal(result["label"], trained.predict(x))
        np.testing.assert_allclose(result["probabilities"], trained.predict_proba(x), rtol=1e-6)
    else:
        expected = trained.predict(x)
        np.testing.assert_array_equal(result["prediction"].reshape(expected.shape), expected)


def test_lightgbm_detection_is_by_content(models: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "model.lgb"
    renamed.write_bytes((models / "binary.txt").read_bytes())
    assert default_runtimes().detect(renamed).format == "lightgbm"
    readme = tmp_path / "README.txt"
    readme.write_text("tree\nthis file lists the trees in the park\n")
    with pytest.raises(UnsupportedFormat, match="README.txt: file of no known format"):
        default_runtimes().detect(readme)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_broken_lightgbm_model_stores_nothing(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.txt"
    path.write_text("tree\nversion=v4\nnum_class=1\nmax_feature_idx=3\ngarbage\n")
    with pytest.raises(InvalidModel) as refused:
        registry.push(path, "broken")
    assert str(refused.value).startswith("model.txt is not a valid LightGBM model: ")
    assert "\n" not in str(refused.value)
    assert stored_nothing(registry, home)


# --- both ---------------------------------------------------------------------------------------


BOOSTERS = [(XGBOOST, "binary:logistic.json", np.float32), (LIGHTGBM, "binary.txt", np.float64)]


@pytest.mark.parametrize(
    ("runtime", "name"),
    [(XGBOOST, "binary:logistic.json"), (LIGHTGBM, "binary.txt")],
    ids=["xgboost", "lightgbm"],
)
def test_a_negative_thread_count_is_refused(runtime: Any, name: str, models: Path) -> None:
    with pytest.raises(InvalidInput, match="intra_op_threads must be 0"):
        runtime.load(models / name, LoadOptions(intra_op_threads=-1))


@pytest.mark.parametrize(("runtime", "name", "dtype"), BOOSTERS, ids=["xgboost", "lightgbm"])
def test_examples_and_declared_signatures(
    runtime: Any, name: str, dtype: Any, models: Path
) -> None:
    other = np.float64 if dtype is np.float32 else np.float32
    x = features("breast_cancer", other)
    model = load(runtime, models / name, PushOptions(example={"x": x[:3]}))
    assert model.signature.inputs == (TensorSpec("input", DataType.from_numpy(other), (-1, 30)),)
    expected = load(runtime, models / name).predict({"input": x.astype(dtype)})["label"]
    np.testing.assert_array_equal(model.predict({"input": x})["label"], expected)
    with pytest.raises(InvalidInput, match=r"the model takes \[-1, 30\]"):
        runtime.inspect(models / name, PushOptions(example={"x": x[:3, :4]}))
    text = Signature((TensorSpec("input", DataType.BYTES, (-1, 30)),), classifier_outputs(2)[:1])
    with pytest.raises(InvalidInput, match="models take numbers"):
        runtime.inspect(models / name, PushOptions(signature=text))


@pytest.mark.parametrize(("runtime", "name", "dtype"), BOOSTERS, ids=["xgboost", "lightgbm"])
def test_concurrent_predictions(runtime: Any, name: str, dtype: Any, models: Path) -> None:
    model = load(runtime, models / name, threads=1)
    x = features("breast_cancer", dtype)
    expected = model.predict({"input": x})["probabilities"]

    def predict_rows(start: int) -> bool:
        rows = model.predict({"input": x[start : start + 7]})["probabilities"]
        return bool(np.array_equal(rows, expected[start : start + 7]))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(predict_rows, [i % 560 for i in range(400)]))


def test_missing_frameworks_say_what_to_install(models: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
        registry.push(models / "binary:logistic.json", "fraud")
        registry.push(models / "binary.txt", "churn")
    script = """
import sys
sys.modules["xgboost"] = sys.modules["lightgbm"] = None  # as if neither were installed
from modelport import Registry, Settings
from modelport.errors import MissingDependency
with Registry(Settings(home=sys.argv[1])) as registry:
    for action in (
        lambda: registry.push(sys.argv[2], "m"),
        lambda: registry.push(sys.argv[3], "m"),
        lambda: registry.load("fraud"),
        lambda: registry.load("churn"),
    ):
        try:
            action()
        except MissingDependency as exc:
            print(exc)
"""
    paths = [models / "multi:softprob.ubj", models / "regression.txt"]
    result = subprocess.run(
        [sys.executable, "-c", script, home, *paths],
        capture_output=True, text=True, env=cli_env(home), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    xgboost = "serving XGBoost models needs xgboost: pip install 'modelport[xgboost]'"
    lightgbm = "serving LightGBM models needs lightgbm: pip install 'modelport[lightgbm]'"
    assert result.stdout.splitlines() == [xgboost, lightgbm, xgboost, lightgbm]


def test_cli_and_server_predict_as_the_sdk(home: Path, models: Path, tmp_path: Path) -> None:
    for path, name in (
        (models / "binary:logistic.json", "fraud"),
        (models / "binary.txt", "churn"),
    ):
        pushed = run_cli("push", path, "--name", name)
        assert pushed.returncode == 0, pushed.stderr
    x32 = features("breast_cancer")[::40]
    x64 = features("breast_cancer", np.float64)[::40]
    np.save(tmp_path / "x.npy", x32)
    cli = run_cli("predict", "fraud", "--input", tmp_path / "x.npy")
    assert cli.returncode == 0, cli.stderr
    expected = {
        "fraud": predict_in_process(home, "fraud", {"input": x32}),
        "churn": predict_in_process(home, "churn", {"input": x64}),
    }
    assert json.loads(cli.stdout)["label"] == expected["fraud"]["label"].tolist()

    with running_server(home, ["fraud", "churn"]) as server:
        responses = {
            name: httpx.post(
                f"{server.http_url}/v2/models/{name}/infer",
                json={"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]},
                timeout=30,
            )
            for name, x, datatype in (("fraud", x32, "FP32"), ("churn", x64, "FP64"))
        }  # fmt: skip
    assert server.proc.returncode == 0, server.output()

    for name, response in responses.items():
        assert response.status_code == 200, response.text
        outputs = {output["name"]: output for output in response.json()["outputs"]}
        assert set(outputs) == {"label", "probabilities"}
        for key, value in expected[name].items():
            assert outputs[key]["datatype"] == DataType.from_numpy(value.dtype).value
            received = np.array(outputs[key]["data"], value.dtype).reshape(outputs[key]["shape"])
            np.testing.assert_array_equal(received, value)
