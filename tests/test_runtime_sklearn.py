"""The scikit-learn runtimes against real models: ``skops`` files and (trusted) pickles, pushed
through the SDK and the CLI, compared with scikit-learn's own predictions, served by a real
server; and the refusals that keep code-running files out unless the user trusts them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modelport import Registry, Settings
from modelport.errors import InvalidInput, InvalidModel
from modelport.runtimes import CheckedModel, LoadOptions, PushOptions
from modelport.runtimes.sklearn.runtime import PickleRuntime, SkopsRuntime
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.serving_fixtures import cli_env, predict_in_process, running_server
from tests.tabular_models import (
    TEXTS,
    TOPICS,
    MakesDirectory,
    features,
    save_pickle,
    save_skops,
    sklearn_model,
    target,
)

SKOPS = SkopsRuntime()
PICKLE = PickleRuntime()
IRIS = features("iris")
PICKLE_REFUSAL = (
    "{} is a pickle, and loading a pickle runs code from the file; push it with --trust-pickle "
    "if you trust where it came from, or save the model with skops (skops.io.dump) — a safe "
    "format — or convert it to ONNX"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sklearn")
    for kind in ("iris_pipeline", "iris_forest", "iris_names", "diabetes_ridge", "iris_pca"):
        save_skops(sklearn_model(kind), directory / f"{kind}.skops")
    save_skops(sklearn_model("text"), directory / "text.skops")
    for suffix in (".joblib", ".pkl", ".pickle"):
        save_pickle(sklearn_model("iris_forest"), directory / f"forest{suffix}")
    return directory


def stored_nothing(registry: Registry, home: Path) -> bool:
    blobs = list((home / "artifacts" / "blobs").glob("*/*"))
    return registry.list_models() == [] and blobs == []


def load(runtime: Any, path: Path, options: PushOptions) -> Any:
    """What ``Registry.load`` does after ``Registry.push``: inspect, then load with the record."""
    info = runtime.inspect(path, options)
    recorded = LoadOptions(metadata=info.metadata, trust_pickle=options.trust_pickle)
    return CheckedModel(runtime.load(path, recorded))


# --- pushing and predicting -------------------------------------------------------------------


def test_skops_pipeline_predicts_as_scikit_learn(registry: Registry, models: Path) -> None:
    version = registry.push(models / "iris_pipeline.skops", "churn")

    assert (version.format, version.trust_pickle) == ("skops", False)
    assert version.signature == Signature(
        (TensorSpec("input", DataType.FP32, (-1, 4)),),
        (
            TensorSpec("label", DataType.INT64, (-1,)),
            TensorSpec("probabilities", DataType.FP32, (-1, 3)),
        ),
    )
    assert version.metadata["estimator"] == "sklearn.pipeline.Pipeline"
    assert version.metadata["classes"] == ["0", "1", "2"]
    assert version.metadata["untrusted_types"] == []
    classifier = sklearn_model("iris_pipeline")
    result = registry.load("churn").predict({"input": IRIS})
    np.testing.assert_array_equal(result["label"], classifier.predict(IRIS))
    assert result["probabilities"].dtype == np.float32
    np.testing.assert_allclose(result["probabilities"], classifier.predict_proba(IRIS), atol=1e-6)


def test_pickles_are_refused_unless_trusted(
    registry: Registry, models: Path, home: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    evil = save_pickle(MakesDirectory(marker), tmp_path / "evil.pkl")
    for path in (models / "forest.joblib", models / "forest.pkl", models / "forest.pickle", evil):
        with pytest.raises(InvalidModel) as refused:
            registry.push(path, "churn")
        assert str(refused.value) == PICKLE_REFUSAL.format(path.name)
    assert not marker.exists()
    assert stored_nothing(registry, home)

    version = registry.push(models / "forest.joblib", "churn", trust_pickle=True)

    assert (version.format, version.trust_pickle) == ("sklearn_pickle", True)
    forest = sklearn_model("iris_forest")
    result = registry.load("churn").predict({"input": IRIS})
    np.testing.assert_array_equal(result["label"], forest.predict(IRIS))
    np.testing.assert_allclose(result["probabilities"], forest.predict_proba(IRIS), atol=1e-6)


@pytest.mark.parametrize("suffix", [".pkl", ".pickle"])
def test_plain_pickles_load_when_trusted(models: Path, suffix: str) -> None:
    model = load(PICKLE, models / f"forest{suffix}", PushOptions(trust_pickle=True))
    np.testing.assert_array_equal(
        model.predict({"input": IRIS})["label"], sklearn_model("iris_forest").predict(IRIS)
    )


def test_a_version_recorded_untrusted_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = save_pickle(MakesDirectory(marker), tmp_path / "evil.joblib")
    with pytest.raises(InvalidModel, match="is a pickle, and loading a pickle runs code"):
        PICKLE.load(evil, LoadOptions(trust_pickle=False))
    assert not marker.exists()


def test_skops_types_beyond_the_defaults_need_trust(
    registry: Registry, models: Path, home: Path
) -> None:
    path = models / "iris_forest.skops"
    with pytest.raises(InvalidModel) as refused:
        registry.push(path, "forest")
    assert str(refused.value) == (
        "iris_forest.skops holds types skops does not trust by default: "
        "sklearn.tree._tree.Tree; rebuilding them can run their code. Push it with "
        "--trust-pickle if you trust them and where the file came from"
    )
    assert stored_nothing(registry, home)
    with pytest.raises(InvalidModel, match="does not trust"):
        SKOPS.load(path, LoadOptions(trust_pickle=False))

    version = registry.push(path, "forest", trust_pickle=True)

    assert (version.format, version.trust_pickle) == ("skops", True)
    assert version.metadata["untrusted_types"] == ["sklearn.tree._tree.Tree"]
    result = registry.load("forest").predict({"input": IRIS})
    np.testing.assert_array_equal(result["label"], sklearn_model("iris_forest").predict(IRIS))


@pytest.mark.parametrize(
    ("kind", "spec", "method"),
    [
        ("iris_names", TensorSpec("label", DataType.BYTES, (-1,)), "predict"),
        ("diabetes_ridge", TensorSpec("prediction", DataType.FP64, (-1,)), "predict"),
        ("iris_pca", TensorSpec("output", DataType.FP64, (-1, -1)), "transform"),
    ],
)
def test_outputs_follow_the_kind_of_estimator(
    models: Path, kind: str, spec: TensorSpec, method: str
) -> None:
    model = load(SKOPS, models / f"{kind}.skops", PushOptions())
    assert model.signature.outputs[0] == spec
    x = features("diabetes" if kind == "diabetes_ridge" else "iris")

    result = model.predict({"input": x})[spec.name]

    expected = getattr(sklearn_model(kind), method)(x)
    if spec.datatype is DataType.BYTES:
        expected = np.array([name.encode() for name in expected], dtype=object)
    np.testing.assert_array_equal(result, expected.astype(spec.datatype.numpy))
    assert result.dtype == spec.datatype.numpy


def test_class_names_are_recorded(models: Path) -> None:
    info = SKOPS.inspect(models / "iris_names.skops", PushOptions())
    assert info.metadata["classes"] == ["setosa", "versicolor", "virginica"]
    assert info.metadata["estimator"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert info.metadata["sklearn_version"]


def test_a_text_pipeline_learns_its_signature_from_an_example(models: Path) -> None:
    path = models / "text.skops"
    with pytest.raises(InvalidInput, match=r"give an example input with --example x.npz"):
        SKOPS.inspect(path, PushOptions())
    example = {"text": np.array(TEXTS[:2], dtype=object)}

    model = load(SKOPS, path, PushOptions(example=example))

    assert model.signature.inputs == (TensorSpec("input", DataType.BYTES, (-1,)),)
    assert model.signature.outputs[0] == TensorSpec("label", DataType.BYTES, (-1,))
    texts = np.array([text.encode() for text in TEXTS], dtype=object)
    labels = model.predict({"input": texts}, ["label"])["label"]
    assert list(labels) == [topic.encode() for topic in TOPICS]


def test_an_example_chooses_the_input_datatype(models: Path) -> None:
    model = load(SKOPS, models / "iris_pipeline.skops", PushOptions(example={"x": IRIS[:2] * 1.0}))
    assert model.signature.inputs[0].datatype is DataType.FP32  # float32 * 1.0 stays float32
    wide = features("iris", np.float64)
    model = load(SKOPS, models / "iris_pipeline.skops", PushOptions(example={"x": wide[:2]}))
    assert model.signature.inputs == (TensorSpec("input", DataType.FP64, (-1, 4)),)
    expected = sklearn_model("iris_pipeline").predict(wide)
    np.testing.assert_array_equal(model.predict({"input": wide})["label"], expected)
    with pytest.raises(InvalidInput, match="expected datatype FP64, received FP32"):
        model.predict({"input": IRIS})


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ({"x": IRIS[:2, :3]}, r"the example input has shape \[2, 3\]; the model takes \[-1, 4\]"),
        ({"a": IRIS[:2], "b": IRIS[:2]}, "the example must hold one array, not 'a', 'b'"),
        ({"x": IRIS[:0]}, "the example input needs at least one row"),
    ],
)
def test_examples_that_do_not_fit(models: Path, example: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SKOPS.inspect(models / "iris_pipeline.skops", PushOptions(example=example))


def test_a_declared_signature_may_rename_the_input_and_narrow_the_outputs(models: Path) -> None:
    declared = Signature(
        (TensorSpec("features", DataType.FP32, (-1, 4)),),
        (TensorSpec("label", DataType.INT32, (-1,)),),
    )
    model = load(SKOPS, models / "iris_pipeline.skops", PushOptions(signature=declared))
    assert model.signature == declared

    result = model.predict({"features": IRIS})

    assert list(result) == ["label"]
    assert result["label"].dtype == np.int32
    np.testing.assert_array_equal(result["label"], sklearn_model("iris_pipeline").predict(IRIS))


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        (["features"], ["score"], "outputs must be among this model's outputs: 'label', 'prob"),
        (["a", "b"], ["label"], "--signature lists 2 inputs; this model takes one 2-D input"),
        (["wide"], ["label"], r"the model's input has shape \[-1, 4\]"),
    ],
)
def test_declared_signatures_that_do_not_fit(
    models: Path, inputs: list[str], outputs: list[str], message: str
) -> None:
    width = 5 if inputs == ["wide"] else 4
    declared = Signature(
        tuple(TensorSpec(name, DataType.FP32, (-1, width)) for name in inputs),
        tuple(TensorSpec(name, DataType.INT64, (-1,)) for name in outputs),
    )
    with pytest.raises(InvalidInput, match=message):
        SKOPS.inspect(models / "iris_pipeline.skops", PushOptions(signature=declared))


def test_a_model_fitted_on_a_dataframe_takes_one_array(tmp_path: Path) -> None:
    names = ["sepal length", "sepal width", "petal length", "petal width"]
    classifier = LogisticRegression(max_iter=1000).fit(features("iris", np.float64), target("iris"))
    classifier.feature_names_in_ = np.array(names, dtype=object)  # what fit(DataFrame) records
    model = load(SKOPS, save_skops(classifier, tmp_path / "frame.skops"), PushOptions())
    assert model.signature.inputs == (TensorSpec("input", DataType.FP32, (-1, 4)),)
    assert SKOPS.inspect(tmp_path / "frame.skops", PushOptions()).metadata["feature_names"] == names

    if importlib.util.find_spec("pandas") is None:  # no DataFrame to rebuild: sklearn warns
        with pytest.warns(UserWarning, match="does not have valid feature names"):
            labels = model.predict({"input": IRIS})["label"]
    else:
        labels = model.predict({"input": IRIS})["label"]
    assert labels.shape == (150,)


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("bad.skops", lambda p: p.write_bytes(b"not a zip"), "bad.skops is not a skops file"),
        (
            "dict.skops",
            lambda p: save_skops({"weights": [1, 2]}, p),
            "the file holds a builtins.dict, not a scikit-learn model",
        ),
        (
            "unfitted.skops",
            lambda p: save_skops(LogisticRegression(), p),
            "the sklearn.linear_model._logistic.LogisticRegression in the file is not fitted",
        ),
        (
            "bad.joblib",
            lambda p: p.write_bytes(b"\x80\x04garbage"),
            "bad.joblib could not be unpickled",
        ),
    ],
)
def test_broken_files_are_refused_in_one_line(
    registry: Registry, home: Path, tmp_path: Path, name: str, make: Any, message: str
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(InvalidModel) as refused:
        registry.push(path, "broken", trust_pickle=True)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert stored_nothing(registry, home)


def test_values_scikit_learn_refuses_are_invalid_input(models: Path) -> None:
    model = load(SKOPS, models / "iris_pipeline.skops", PushOptions())
    holes = IRIS[:2].copy()
    holes[0, 0] = np.nan
    with pytest.raises(InvalidInput, match="could not run on these inputs: Input X contains NaN"):
        model.predict({"input": holes})


def test_concurrent_predictions(models: Path) -> None:
    model = load(SKOPS, models / "iris_forest.skops", PushOptions(trust_pickle=True))
    expected = sklearn_model("iris_forest").predict(IRIS)

    def predict_row(row: int) -> int:
        return int(model.predict({"input": IRIS[row : row + 1]})["label"][0])

    with ThreadPoolExecutor(max_workers=8) as pool:
        predicted = list(pool.map(predict_row, [i % 150 for i in range(300)]))

    assert predicted == [int(expected[i % 150]) for i in range(300)]


def test_missing_scikit_learn_says_what_to_install(models: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
        registry.push(models / "iris_pipeline.skops", "pushed")
    script = """
import sys
sys.modules["sklearn"] = None  # as if scikit-learn were not installed
from pathlib import Path
from modelport import Registry, Settings
from modelport.errors import MissingDependency
with Registry(Settings(home=Path(sys.argv[1]))) as registry:
    for action in (
        lambda: registry.push(sys.argv[2], "m"),
        lambda: registry.push(sys.argv[3], "m", trust_pickle=True),
        lambda: registry.load("pushed"),
    ):
        try:
            action()
        except MissingDependency as exc:
            print(exc)
"""
    paths = [models / "iris_pipeline.skops", models / "forest.joblib"]
    result = subprocess.run(
        [sys.executable, "-c", script, home, *paths],
        capture_output=True, text=True, env=cli_env(home), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    message = (
        "serving scikit-learn models needs scikit-learn and skops: pip install 'modelport[sklearn]'"
    )
    assert result.stdout.splitlines() == [message] * 3


# --- the CLI and a real server ---------------------------------------------------------------


def test_cli_refuses_a_pickle_unless_trusted_and_predicts_as_the_sdk(
    home: Path, models: Path, tmp_path: Path
) -> None:
    refused = run_cli("push", models / "forest.joblib", "--name", "churn")
    assert refused.returncode == 6
    assert refused.stderr == f"error: {PICKLE_REFUSAL.format('forest.joblib')}\n"

    trusted = run_cli("push", models / "forest.joblib", "--name", "churn", "--trust-pickle")
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.startswith("pushed churn@1 (sklearn_pickle,")
    np.save(tmp_path / "x.npy", IRIS[:10])
    result = run_cli("predict", "churn", "--input", tmp_path / "x.npy")

    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)
    expected = predict_in_process(home, "churn", {"input": IRIS[:10]})
    assert outputs["label"] == expected["label"].tolist()
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], rtol=1e-6)
    with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
        assert registry.get("churn").trust_pickle is True


def test_cli_pushes_skops_with_an_example(home: Path, models: Path, tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"input": TEXTS[:2]}))
    example = tmp_path / "x.json"

    pushed = run_cli("push", models / "text.skops", "--name", "topics", "--example", example)

    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("pushed topics@1 (skops,")
    texts = np.array([b"the striker scored a goal", b"the minister resigned"], dtype=object)
    labels = predict_in_process(home, "topics", {"input": texts})["label"]
    assert list(labels) == [b"sport", b"politics"]


def test_served_predictions_equal_in_process(models: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
        registry.push(models / "iris_pipeline.skops", "pipeline")
        registry.push(models / "forest.joblib", "forest", trust_pickle=True)
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

    with running_server(home, ["pipeline", "forest"]) as server:
        responses = {
            name: httpx.post(f"{server.http_url}/v2/models/{name}/infer", json=body, timeout=30)
            for name in ("pipeline", "forest")
        }
    assert server.proc.returncode == 0, server.output()

    for name, response in responses.items():
        assert response.status_code == 200, response.text
        outputs = {output["name"]: output for output in response.json()["outputs"]}
        expected = predict_in_process(home, name, {"input": x})
        assert set(outputs) == set(expected)
        for key, value in expected.items():
            assert outputs[key]["datatype"] == DataType.from_numpy(value.dtype).value
            received = np.array(outputs[key]["data"], value.dtype).reshape(outputs[key]["shape"])
            np.testing.assert_array_equal(received, value)
