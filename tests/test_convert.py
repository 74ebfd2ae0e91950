"""Conversion to ONNX (``modelport convert``): a real model of each source format pushed
natively, converted through the SDK and the CLI, and the converted version checked against
its source: lineage, parity metrics, signature (dynamic batch), predictions, its files
(external data for torch.export); then the refusals: parity failures store nothing, ONNX
sources, unknown references, targets and formats, opsets the exporter cannot write, a
missing converter library."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelport import Registry, Settings
from modelport.conversion import (
    DEFAULT_TOLERANCES,
    LABEL_AGREEMENT,
    Tolerance,
    convert,
    supported_formats,
)
from modelport.conversion.converters import converter_for
from modelport.errors import (
    InvalidInput,
    InvalidModel,
    InvalidName,
    MissingDependency,
    NotFound,
    UnsupportedFormat,
)
from modelport.jobs.parity import compare
from modelport.types import DataType, Tensors
from tests.conftest import run_cli
from tests.serving_fixtures import running_server
from tests.tabular_models import (
    features,
    lightgbm_model,
    save_lightgbm,
    save_pickle,
    save_skops,
    save_xgboost,
    sklearn_model,
    xgboost_early_stopped,
    xgboost_model,
)
from tests.torch_models import DictHeads, TwoInputs, save_exported, save_scripted, small_cnn

RNG = np.random.default_rng(7)
DIGITS = RNG.standard_normal((6, 1, 28, 28)).astype(np.float32)
PHOTOS = RNG.standard_normal((6, 3, 32, 32)).astype(np.float32)
FEATURES = RNG.standard_normal((6, 4)).astype(np.float32)
BIAS = RNG.standard_normal((6, 3)).astype(np.float32)
VECTORS = RNG.standard_normal((6, 6)).astype(np.float32)
PRECISION = [DataType.FP16, DataType.FP32, DataType.FP64]


@dataclass(frozen=True)
class Case:
    """A model of one source format: how to save it, push it, and real rows to predict on."""

    save: Callable[[Path], Path]
    converter: str
    inputs: Callable[[], Tensors]
    trust_pickle: bool = False
    example: Tensors | None = None
    exporter: str | None = None
    files: tuple[str, ...] = ("model.onnx",)


def _rows(name: str, dtype: Any = np.float32) -> Callable[[], Tensors]:
    return lambda: {"input": features(name, dtype)[::7]}


CASES = {
    "skops_classifier": Case(
        lambda d: save_skops(sklearn_model("iris_pipeline"), d / "clf.skops"),
        "skl2onnx",
        _rows("iris"),
    ),
    "pickle_regressor": Case(
        lambda d: save_pickle(sklearn_model("diabetes_ridge"), d / "ridge.joblib"),
        "skl2onnx",
        _rows("diabetes"),
        trust_pickle=True,
    ),
    "xgboost_binary": Case(
        lambda d: save_xgboost(xgboost_model("binary:logistic"), d / "binary.json"),
        "onnxmltools",
        _rows("breast_cancer"),
    ),
    "xgboost_multiclass": Case(
        lambda d: save_xgboost(xgboost_model("multi:softprob"), d / "multi.ubj"),
        "onnxmltools",
        _rows("iris"),
    ),
    # Class indices natively; the runtime serves the softmax of the margins as probabilities.
    "xgboost_softmax": Case(
        lambda d: save_xgboost(xgboost_model("multi:softmax"), d / "softmax.json"),
        "onnxmltools",
        _rows("iris"),
    ),
    # The runtime predicts up to the best iteration; so must the converted trees.
    "xgboost_early_stopped": Case(
        lambda d: save_xgboost(xgboost_early_stopped(), d / "early.json"),
        "onnxmltools",
        _rows("breast_cancer"),
    ),
    "lightgbm_multiclass": Case(
        lambda d: save_lightgbm(lightgbm_model("multiclass"), d / "lgbm.txt"),
        "onnxmltools",
        _rows("iris", np.float64),  # LightGBM's signature takes float64
    ),
    "torchscript_cnn": Case(
        lambda d: save_scripted(small_cnn(), d / "cnn.pt"),
        "torch.onnx",
        lambda: {"image": DIGITS},
        trust_pickle=True,
        example={"image": DIGITS[:2]},
        exporter="torchscript",
    ),
    "torch_export_cnn": Case(
        lambda d: save_exported(small_cnn(3, 32), [PHOTOS[:2]], d / "cnn.pt2"),
        "torch.onnx",
        lambda: {"input": PHOTOS},
        trust_pickle=True,
        exporter="dynamo",
        files=("model.onnx", "model.onnx.data"),  # the dynamo exporter's external weights
    ),
    "torchscript_two_inputs": Case(
        lambda d: save_scripted(TwoInputs(), d / "two.pt"),
        "torch.onnx",
        lambda: {"features": FEATURES, "bias": BIAS},
        trust_pickle=True,
        example={"features": FEATURES[:2], "bias": BIAS[:2]},
        exporter="torchscript",
    ),
    "torch_export_dict": Case(
        lambda d: save_exported(DictHeads(), [VECTORS[:2]], d / "dict.pt2"),
        "torch.onnx",
        lambda: {"x": VECTORS},
        trust_pickle=True,
        exporter="dynamo",  # weights this small stay inside model.onnx
    ),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case's model file, saved once per worker."""
    root = tmp_path_factory.mktemp("sources")
    return {name: case.save(root) for name, case in CASES.items()}


@pytest.fixture
def sqlite_registry(home: Path) -> Iterator[Registry]:
    with Registry(Settings(home=home)) as registry:
        yield registry


def _push(registry: Registry, case_name: str, saved: dict[str, Path], name: str = "m") -> str:
    case = CASES[case_name]
    version = registry.push(
        saved[case_name], name, trust_pickle=case.trust_pickle, example=case.example
    )
    return version.ref


def _assert_predicts_like(registry: Registry, source: str, converted: str, inputs: Tensors) -> None:
    native, onnx_model = registry.load(source), registry.load(converted)
    try:
        expected, actual = native.predict(inputs), onnx_model.predict(inputs)
    finally:
        native.close()
        onnx_model.close()
    assert list(actual) == list(expected)
    for name, want in expected.items():
        if name == "label":
            assert np.mean(actual[name] == want) >= LABEL_AGREEMENT
        elif want.dtype.kind == "f":
            # Judged at the coarser precision: a float32 graph for a float64 source, say.
            datatypes = [DataType.from_numpy(want.dtype), DataType.from_numpy(actual[name].dtype)]
            allowed = DEFAULT_TOLERANCES[min(datatypes, key=PRECISION.index)]
            np.testing.assert_allclose(
                actual[name], want, rtol=allowed.relative, atol=allowed.absolute
            )
        else:
            np.testing.assert_array_equal(actual[name], want)


# --- every source format, through the SDK -----------------------------------------------------


@pytest.mark.parametrize("case_name", list(CASES))
def test_each_format_converts_to_onnx_that_predicts_like_its_source(
    sqlite_registry: Registry, saved: dict[str, Path], case_name: str
) -> None:
    registry = sqlite_registry
    case = CASES[case_name]
    source_ref = _push(registry, case_name, saved)
    source = registry.get(source_ref)

    report = convert(registry, source_ref, to="onnx")

    version = report.version
    assert version.ref == "m@2"
    assert version.format == "onnx"
    assert version == registry.get("m@2")  # what the report says is what was stored
    assert version.lineage.parent == "m@1"
    assert version.lineage.operation == "convert"
    parameters = version.lineage.parameters
    assert parameters["converter"] == case.converter
    assert parameters["converter_version"]
    assert parameters["from"] == source.format
    assert parameters.get("exporter") == case.exporter
    assert parameters["source_trust_pickle"] is case.trust_pickle
    assert parameters["opset"] == version.metadata["opsets"].get("ai.onnx")
    assert parameters["opsets"] == version.metadata["opsets"]
    assert version.trust_pickle is False  # ONNX loads without running code from the file
    assert sorted(entry.path for entry in version.files) == sorted(case.files)

    assert report.parity.passed
    assert version.metrics == report.parity.metrics()
    assert version.metrics["parity.passed"] is True
    assert version.metrics["parity.rows"] == 16
    for output in source.signature.outputs:
        key = "agreement" if output.name == "label" else "max_abs"
        assert f"parity.{key}.{output.name}" in version.metrics
    if "label" in source.signature.output_names():
        assert version.metrics["parity.label_agreement"] >= LABEL_AGREEMENT

    # Clients of m@1 call m@2 unchanged: same inputs, same output names, a dynamic batch.
    assert version.signature.inputs == source.signature.inputs
    assert version.signature.output_names() == source.signature.output_names()
    assert [o.shape for o in version.signature.outputs] == [
        o.shape for o in source.signature.outputs
    ]
    for spec in (*version.signature.inputs, *version.signature.outputs):
        assert spec.shape is not None and spec.shape[0] == -1, spec
    _assert_predicts_like(registry, "m@1", "m@2", case.inputs())


def test_lineage_and_metrics_are_stored_on_each_backend(
    registry: Registry, saved: dict[str, Path]
) -> None:
    _push(registry, "lightgbm_multiclass", saved)

    report = convert(registry, "m@1", tolerance=1e-3, aliases=["onnx"])

    with Registry(registry.settings) as reopened:
        stored = reopened.get("m@onnx")
    assert stored.ref == "m@2"
    assert stored.lineage == report.version.lineage
    assert stored.lineage.parameters["tolerance"] == 1e-3
    assert stored.metrics == report.parity.metrics()
    assert {output.tolerance for output in report.parity.outputs} == {
        None, Tolerance(1e-3, 1e-3)
    }  # fmt: skip
    # LightGBM takes float64; the float32 trees get a cast, so clients send what they sent.
    assert stored.signature.inputs[0].datatype is DataType.FP64


# --- through the CLI --------------------------------------------------------------------------

# Each CLI run imports its frameworks afresh, so formats the other CLI tests convert (skops,
# XGBoost) are left out here.
CLI_CASES = ["pickle_regressor", "lightgbm_multiclass", "torchscript_cnn", "torch_export_cnn"]


@pytest.mark.parametrize("case_name", CLI_CASES)
def test_each_format_converts_through_the_cli(
    home: Path, sqlite_registry: Registry, saved: dict[str, Path], case_name: str
) -> None:
    case = CASES[case_name]
    _push(sqlite_registry, case_name, saved)

    result = run_cli("convert", "m@1", "--to", "onnx", "--alias", "onnx", "--json")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the exporters' own warnings and logs stay out of the way
    report = json.loads(result.stdout)
    assert report["source"] == "m@1"
    assert report["version"]["ref"] == "m@2"
    assert report["version"]["format"] == "onnx"
    assert report["version"]["aliases"] == ["onnx"]
    assert report["version"]["lineage"]["parent"] == "m@1"
    assert report["parameters"]["converter"] == case.converter
    assert report["parity"]["passed"] is True
    assert all(output["passed"] for output in report["parity"]["outputs"])
    stored = sqlite_registry.get("m@onnx")
    assert stored.metrics["parity.passed"] is True
    assert stored.lineage.parameters == report["parameters"]
    _assert_predicts_like(sqlite_registry, "m@1", "m@onnx", case.inputs())


def test_the_cli_prints_the_new_version_the_converter_and_a_parity_table(
    home: Path, sqlite_registry: Registry, saved: dict[str, Path]
) -> None:
    _push(sqlite_registry, "skops_classifier", saved, name="iris")

    result = run_cli("convert", "iris", "--opset", "15", "--name", "iris-onnx")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("converted iris@1 → iris-onnx@1 (onnx, skl2onnx ")
    assert lines[0].endswith(", opset 15); parity on 16 generated rows:")
    assert lines[1].split() == ["output", "max", "abs", "max", "rel", "agreement", "tolerance",
                                "(abs/rel)", "result"]  # fmt: skip
    label, probabilities = (line.split() for line in lines[2:])
    assert label == ["label", "-", "-", "100.00%", "-", "ok"]
    assert probabilities[0] == "probabilities" and probabilities[-2:] == ["0.0001/0.001", "ok"]
    converted = sqlite_registry.get("iris-onnx@1")
    assert converted.lineage.parent == "iris@1"
    assert converted.lineage.parameters["opset"] == 15
    assert converted.lineage.parameters["opset_requested"] == 15
    assert converted.metadata["opsets"]["ai.onnx"] == 15


# --- parity inputs ----------------------------------------------------------------------------


def test_parity_on_a_dataset(
    home: Path, sqlite_registry: Registry, saved: dict[str, Path], tmp_path: Path
) -> None:
    _push(sqlite_registry, "xgboost_binary", saved)
    dataset = tmp_path / "cancer.npz"
    np.savez(dataset, input=features("breast_cancer", np.float64))  # float64 features: cast

    result = run_cli("convert", "m@1", "--dataset", dataset, "--rows", "100", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["parity"] | {"outputs": None} == {
        "passed": True, "rows": 100, "inputs": "cancer.npz", "outputs": None
    }  # fmt: skip
    converted = sqlite_registry.get("m@2")
    assert converted.metrics["parity.rows"] == 100
    assert converted.lineage.parameters["parity_inputs"] == "cancer.npz"


def test_parity_on_a_npy_dataset_for_a_one_input_model(
    sqlite_registry: Registry, saved: dict[str, Path], tmp_path: Path
) -> None:
    _push(sqlite_registry, "torchscript_cnn", saved)
    np.save(tmp_path / "digits.npy", DIGITS)

    report = convert(sqlite_registry, "m@1", dataset=tmp_path / "digits.npy")

    assert report.parity.rows == len(DIGITS)
    assert report.parity.inputs == "digits.npy"


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: np.savez(p / "d.npz", pixels=DIGITS), "unknown input 'pixels'"),
        (
            lambda p: np.savez(p / "d.npz", image=DIGITS[:, :, :10]),
            "expected shape [-1, 1, 28, 28]",
        ),
        (lambda p: np.savez(p / "d.npz", image=DIGITS.astype(np.int64)), "expected datatype FP32"),
        (lambda p: (p / "d.npz").write_text("not a zip"), "cannot read tensors"),
    ],
)
def test_a_dataset_that_does_not_fit_is_refused_before_anything_is_exported(
    sqlite_registry: Registry,
    saved: dict[str, Path],
    tmp_path: Path,
    write: Callable[[Path], Any],
    message: str,
) -> None:
    _push(sqlite_registry, "torchscript_cnn", saved)
    write(tmp_path)

    with pytest.raises(InvalidInput, match=message.replace("[", r"\[")):
        convert(sqlite_registry, "m@1", dataset=tmp_path / "d.npz")
    assert [v.ref for v in sqlite_registry.list_versions("m")] == ["m@1"]


# --- parity failures store nothing -----------------------------------------------------------


def test_a_failed_parity_check_exits_non_zero_and_stores_nothing(
    home: Path, sqlite_registry: Registry, saved: dict[str, Path]
) -> None:
    _push(sqlite_registry, "xgboost_binary", saved, name="cancer")

    # float32 trees summed in another order than XGBoost's own differ in the last bits.
    result = run_cli("convert", "cancer@1", "--tolerance", "0")

    assert result.returncode == 6  # InvalidModel: the converted model is not its source
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "error: the ONNX conversion of cancer@1 (onnxmltools) does not match it on 16 generated "
        "rows: 'probabilities': max abs error "
    )
    assert "(tolerance 0)" in line
    assert line.endswith(
        "nothing was stored (--tolerance accepts larger floating-point differences)"
    )
    assert [v.ref for v in sqlite_registry.list_versions("cancer")] == ["cancer@1"]
    # Nothing was published, so no version number was spent either.
    assert convert(sqlite_registry, "cancer@1").version.ref == "cancer@2"


def test_outputs_the_converted_model_does_not_give_are_refused(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    # binary:logitraw serves raw margins as `prediction`; onnxmltools makes a classifier.
    path = save_xgboost(xgboost_model("binary:logitraw"), tmp_path / "raw.json")
    sqlite_registry.push(path, "raw")

    with pytest.raises(InvalidModel) as caught:
        convert(sqlite_registry, "raw@1")

    # Refused before parity is even measured: the job's conform step sees it missing.
    assert str(caught.value) == (
        "the version derived from raw@1 by convert does not promise what raw@1 promised: "
        "output 'prediction' is missing; nothing was stored"
    )
    assert [v.ref for v in sqlite_registry.list_versions("raw")] == ["raw@1"]


def test_labels_that_disagree_fail_and_probabilities_are_reported(
    sqlite_registry: Registry, saved: dict[str, Path], tmp_path: Path
) -> None:
    # Two different real classifiers of the same signature stand in for a bad conversion.
    sqlite_registry.push(saved["skops_classifier"], "linear")
    sqlite_registry.push(save_pickle(sklearn_model("iris_forest"), tmp_path / "f.pkl"), "forest",
                         trust_pickle=True)  # fmt: skip
    linear, forest = sqlite_registry.load("linear"), sqlite_registry.load("forest")
    inputs = {"input": features("iris")}

    report = compare(linear, forest, inputs, origin="iris.npz")

    by_name = {output.name: output for output in report.outputs}
    assert not report.passed
    assert by_name["label"].agreement is not None and by_name["label"].agreement < 0.99
    assert by_name["label"].problem.endswith("of rows agree; at least 99% must")
    assert by_name["probabilities"].problem.startswith("max abs error ")
    assert report.metrics()["parity.passed"] is False
    assert report.metrics()["parity.label_agreement"] == by_name["label"].agreement
    assert compare(linear, linear, inputs).passed
    assert compare(linear, forest, inputs, tolerance=1.0).outputs[1].passed


# --- refusals ---------------------------------------------------------------------------------


def test_an_onnx_version_is_already_onnx(
    home: Path, sqlite_registry: Registry, iris_onnx: Path
) -> None:
    sqlite_registry.push(iris_onnx, "iris")

    with pytest.raises(
        InvalidInput, match=r"^iris@1 is already ONNX; there is nothing to convert$"
    ):
        convert(sqlite_registry, "iris")
    result = run_cli("convert", "iris@1")
    assert (result.returncode, result.stderr) == (
        2, "error: iris@1 is already ONNX; there is nothing to convert\n"
    )  # fmt: skip


def test_unknown_references(home: Path, sqlite_registry: Registry, saved: dict[str, Path]) -> None:
    _push(sqlite_registry, "skops_classifier", saved, name="iris")

    with pytest.raises(NotFound):
        convert(sqlite_registry, "nope@1")
    with pytest.raises(NotFound):
        convert(sqlite_registry, "iris@7")
    result = run_cli("convert", "nope")
    assert result.returncode == 3
    assert result.stderr.startswith("error: ") and "nope" in result.stderr


def test_unsupported_targets_and_formats_name_what_is_supported(
    sqlite_registry: Registry, saved: dict[str, Path]
) -> None:
    record = sqlite_registry.get(_push(sqlite_registry, "skops_classifier", saved))

    with pytest.raises(
        UnsupportedFormat, match=r"^cannot convert to 'tflite'; modelport converts to: onnx$"
    ):
        convert(sqlite_registry, "m@1", to="tflite")
    caffe = dataclasses.replace(record, format="caffe")
    with pytest.raises(UnsupportedFormat) as caught:
        converter_for(caffe, "onnx")
    assert str(caught.value) == (
        "m@1: there is no converter for 'caffe' models; modelport converts these formats to "
        f"ONNX: {', '.join(supported_formats())}"
    )
    assert supported_formats() == [
        "huggingface", "keras", "lightgbm", "sklearn_pickle", "skops", "tf_savedmodel",
        "torch_export", "torchscript", "xgboost",
    ]  # fmt: skip


def test_a_model_the_converter_cannot_handle(sqlite_registry: Registry, tmp_path: Path) -> None:
    path = save_lightgbm(lightgbm_model("cross_entropy"), tmp_path / "xent.txt")
    sqlite_registry.push(path, "xent")

    with pytest.raises(
        UnsupportedFormat,
        match=r"^xent@1 \(lightgbm\) could not be converted to ONNX: Unsupported LightGbm objective: 'cross_entropy'",
    ):
        convert(sqlite_registry, "xent@1")
    assert len(sqlite_registry.list_versions("xent")) == 1


def test_torchscript_dict_results_are_refused_with_what_to_do_instead(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    path = save_scripted(DictHeads(), tmp_path / "dict.pt")
    sqlite_registry.push(path, "heads", example={"x": VECTORS[:2]}, trust_pickle=True)

    with pytest.raises(UnsupportedFormat) as caught:
        convert(sqlite_registry, "heads@1")

    assert str(caught.value) == (
        "heads@1 returns a dict, which torch's TorchScript-based ONNX exporter cannot export "
        "(prim::DictConstruct); push the model as torch.export (.pt2), whose exporter can, "
        "and convert that"
    )


def test_an_opset_the_exporter_cannot_write(
    sqlite_registry: Registry, saved: dict[str, Path]
) -> None:
    _push(sqlite_registry, "torch_export_cnn", saved)

    # torch's dynamo exporter cannot convert below opset 18; it only logs that and keeps 18.
    with pytest.raises(
        UnsupportedFormat,
        match=r"^torch.onnx could not write m@1 as ONNX opset 13 \(it wrote opset 18\); ask for --opset 18 or newer$",
    ):
        convert(sqlite_registry, "m@1", opset=13)
    assert len(sqlite_registry.list_versions("m")) == 1


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"opset": 0}, InvalidInput, "opset must be between 1 and "),
        ({"opset": 1000}, InvalidInput, "opset must be between 1 and "),
        ({"tolerance": -1.0}, InvalidInput, "tolerance must be a number of 0 or more"),
        ({"tolerance": float("nan")}, InvalidInput, "tolerance must be a number of 0 or more"),
        ({"rows": 0}, InvalidInput, "rows must be 1 or more"),
        ({"name": "no/slash"}, InvalidName, "contains a path separator"),
        ({"aliases": ["7"]}, InvalidName, "all digits"),
    ],
)
def test_bad_options(
    sqlite_registry: Registry,
    saved: dict[str, Path],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    _push(sqlite_registry, "skops_classifier", saved)

    with pytest.raises(error, match=message):
        convert(sqlite_registry, "m@1", **options)


def test_without_the_converter_library_the_error_names_the_extra(
    sqlite_registry: Registry, saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(sqlite_registry, "skops_classifier", saved)
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # what an absent package looks like

    with pytest.raises(
        MissingDependency,
        match=r"^converting scikit-learn models to ONNX needs skl2onnx: pip install 'modelport\[convert\]'$",
    ):
        convert(sqlite_registry, "m@1")


# --- serving ----------------------------------------------------------------------------------


def test_a_converted_model_with_external_data_is_served(
    home: Path, sqlite_registry: Registry, saved: dict[str, Path]
) -> None:
    _push(sqlite_registry, "torch_export_cnn", saved, name="photos")
    convert(sqlite_registry, "photos@1", aliases=["production"])
    expected = sqlite_registry.load("photos@1").predict({"input": PHOTOS})["output"]

    with running_server(home, ["photos@production"], ["--no-grpc"]) as server:
        body = {
            "inputs": [
                {"name": "input", "shape": list(PHOTOS.shape), "datatype": "FP32",
                 "data": PHOTOS.ravel().tolist()}
            ]
        }  # fmt: skip
        response = httpx.post(f"{server.http_url}/v2/models/photos/infer", json=body, timeout=30)

    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    served = np.array(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)
    assert server.proc.returncode == 0
