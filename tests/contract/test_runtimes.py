"""The checked-model contract, once for every format.

Each format's model is built with the builders in ``tests/*_models.py``, inspected and loaded
the way a push and a later load do it (``default_runtimes()``, the recorded metadata passed
along), and then held to the same contract: the signature it records, predictions, requested
outputs, refusals that name the input, output datatypes, close, and batches that agree with
row-by-row predictions and are validated once per request, never again as a batch.

A format whose framework is not installed is skipped (``pytest.importorskip``).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport import InvalidInput, Unavailable
from modelport.errors import Internal, InvalidModel
from modelport.runtimes import (
    CheckedModel,
    LoadedModel,
    LoadOptions,
    ModelInfo,
    Predictor,
    PushOptions,
    default_runtimes,
)
from modelport.serving.batching import Batcher
from modelport.serving.config import ModelServeConfig
from modelport.types import DataType, Signature, Tensors, TensorSpec

pytestmark = [
    # Keras 3 saves variables with np.array(variable), which TensorFlow's variables answer
    # without the copy keyword NumPy 2 asks for.
    pytest.mark.filterwarnings(
        r"ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

RNG = np.random.default_rng(7)
ROWS = 6
TEXTS = ["a great film", "I would not watch it again", "fine", "so dull", "loved it", "meh"]


@dataclass(frozen=True)
class Built:
    """A model on disk as a push would record it, and inputs of ``ROWS`` rows for it."""

    format: str
    path: Path
    info: ModelInfo
    inputs: Tensors
    trusted: bool

    @property
    def entry(self) -> Path:
        return self.info.files.root / self.info.files.entry

    def options(self) -> LoadOptions:
        return LoadOptions(metadata=self.info.metadata, trust_pickle=self.trusted)

    def predictor(self) -> Predictor:
        return default_runtimes().get(self.format).load(self.entry, self.options())

    def load(self) -> CheckedModel:
        return default_runtimes().load(self.format, self.entry, self.options())


Made = tuple[Path, PushOptions, dict[str, Any]]


def _iris() -> np.ndarray[Any, Any]:
    from tests.tabular_models import features

    return features("iris")[::25][:ROWS]


def _onnx(root: Path) -> Made:
    pytest.importorskip("skl2onnx")
    from tests.onnx_models import make_iris_onnx

    return make_iris_onnx(root / "iris.onnx"), PushOptions(), {"input": _iris()}


def _skops(root: Path) -> Made:
    pytest.importorskip("skops")
    from tests.tabular_models import save_skops, sklearn_model

    path = save_skops(sklearn_model("iris_pipeline"), root / "iris.skops")
    return path, PushOptions(), {"input": _iris()}


def _sklearn_pickle(root: Path) -> Made:
    pytest.importorskip("sklearn")
    from tests.tabular_models import save_pickle, sklearn_model

    path = save_pickle(sklearn_model("iris_forest"), root / "forest.joblib")
    return path, PushOptions(trust_pickle=True), {"input": _iris()}


def _xgboost(root: Path) -> Made:
    pytest.importorskip("xgboost")
    from tests.tabular_models import save_xgboost, xgboost_model

    path = save_xgboost(xgboost_model("multi:softprob"), root / "booster.json")
    return path, PushOptions(), {"input": _iris()}


def _lightgbm(root: Path) -> Made:
    pytest.importorskip("lightgbm")
    from tests.tabular_models import lightgbm_model, save_lightgbm

    path = save_lightgbm(lightgbm_model("multiclass"), root / "model.txt")
    return path, PushOptions(), {"input": _iris()}


def _torchscript(root: Path) -> Made:
    pytest.importorskip("torch")
    from tests.torch_models import TwoInputs, save_scripted

    inputs = {"features": _normal(ROWS, 4), "bias": _normal(ROWS, 3)}
    example = {name: array[:2] for name, array in inputs.items()}
    path = save_scripted(TwoInputs(), root / "two.pt")
    return path, PushOptions(example=example, trust_pickle=True), inputs


def _torch_export(root: Path) -> Made:
    pytest.importorskip("torch")
    from tests.torch_models import DictHeads, save_exported

    inputs = {"x": _normal(ROWS, 6)}
    path = save_exported(DictHeads(), [inputs["x"][:2]], root / "heads.pt2")
    return path, PushOptions(trust_pickle=True), inputs


def _keras(root: Path) -> Made:
    pytest.importorskip("tensorflow")
    from tests.keras_models import save_keras, two_heads

    inputs = {"features": _normal(ROWS, 4), "bias": _normal(ROWS, 3)}
    return save_keras(two_heads(), root / "heads.keras"), PushOptions(), inputs


def _tf_savedmodel(root: Path) -> Made:
    pytest.importorskip("tensorflow")
    from tests.keras_models import export_saved_model, two_heads

    inputs = {"features": _normal(ROWS, 4), "bias": _normal(ROWS, 3)}
    return export_saved_model(two_heads(), root / "heads_saved"), PushOptions(), inputs


def _caffe(root: Path) -> Made:
    pytest.importorskip("cv2")
    from tests.caffe_models import tiny_prototxt, tiny_weights, write_caffemodel

    prototxt = root / "deploy.prototxt"
    prototxt.write_text(tiny_prototxt())
    weights = write_caffemodel(root / "weights.caffemodel", tiny_weights())
    return prototxt, PushOptions(companions=(weights,)), {"data": _normal(ROWS, 3, 8, 8)}


def _huggingface(root: Path) -> Made:
    pytest.importorskip("transformers")
    from tests.hf_models import save_classifier

    texts = np.array([text.encode() for text in TEXTS], dtype=object)
    return save_classifier(root / "sentiment"), PushOptions(), {"text": texts}


def _huggingface_onnx(root: Path) -> Made:
    pytest.importorskip("transformers")
    from tests.hf_models import convert_to_onnx, save_classifier

    texts = np.array([text.encode() for text in TEXTS], dtype=object)
    path = convert_to_onnx(save_classifier(root / "sentiment"), root / "sentiment-onnx")
    return path, PushOptions(), {"text": texts}


def _mlflow(root: Path) -> Made:
    pytest.importorskip("mlflow")
    pytest.importorskip("skops")
    from tests.mlflow_models import save_sklearn
    from tests.tabular_models import sklearn_model

    with warnings.catch_warnings():  # MLflow's advice on type hints and environments
        warnings.simplefilter("ignore")
        path = save_sklearn(sklearn_model("iris_pipeline"), root / "mlflow_iris", "skops")
    return path, PushOptions(), {"input": _iris()}


def _mlflow_pyfunc(root: Path) -> Made:
    pytest.importorskip("mlflow")
    pytest.importorskip("pandas")  # mlflow.pyfunc imports it
    from tests.mlflow_models import save_sklearn
    from tests.tabular_models import sklearn_model

    with warnings.catch_warnings():  # MLflow's advice on type hints and environments
        warnings.simplefilter("ignore")
        path = save_sklearn(sklearn_model("iris_pipeline"), root / "pickled", "cloudpickle")
    return path, PushOptions(trust_pickle=True), {"input": _iris()}


def _normal(*shape: int) -> np.ndarray[Any, Any]:
    return RNG.standard_normal(shape).astype(np.float32)


BUILDERS: dict[str, tuple[str, Callable[[Path], Made]]] = {
    # case: (format, builder)
    "onnx": ("onnx", _onnx),
    "skops": ("skops", _skops),
    "sklearn_pickle": ("sklearn_pickle", _sklearn_pickle),
    "xgboost": ("xgboost", _xgboost),
    "lightgbm": ("lightgbm", _lightgbm),
    "torchscript": ("torchscript", _torchscript),
    "torch_export": ("torch_export", _torch_export),
    "keras": ("keras", _keras),
    "tf_savedmodel": ("tf_savedmodel", _tf_savedmodel),
    "caffe": ("caffe", _caffe),
    "huggingface": ("huggingface", _huggingface),
    "huggingface_onnx": ("huggingface_onnx", _huggingface_onnx),
    "mlflow": ("mlflow", _mlflow),  # a native flavor: skops, through the table
    "mlflow_pyfunc": ("mlflow", _mlflow_pyfunc),  # through mlflow.pyfunc
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One format's model, inspected as a push inspects it."""
    case: str = request.param
    name, build = BUILDERS[case]
    path, options, raw = build(tmp_path_factory.mktemp(case))
    info = default_runtimes().get(name).inspect(path, options)
    inputs = {spec.name: _as(spec, raw[spec.name]) for spec in info.signature.inputs}
    return Built(name, path, info, inputs, options.trust_pickle)


@pytest.fixture(scope="module")
def model(built: Built) -> Iterator[CheckedModel]:
    """The format's model, loaded once for the tests that only predict."""
    with built.load() as loaded:
        yield loaded


@pytest.fixture(scope="module")
def expected(built: Built, model: CheckedModel) -> Tensors:
    """Every output for ``built.inputs``, row by row: what batches must agree with."""
    rows = [model.predict(_rows(built.inputs, i, i + 1)) for i in range(ROWS)]
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


def _as(spec: TensorSpec, array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return array if spec.datatype is DataType.BYTES else array.astype(spec.datatype.numpy)


def _rows(inputs: Tensors, start: int, stop: int) -> Tensors:
    return {name: array[start:stop] for name, array in inputs.items()}


def _assert_close(got: Tensors, want: Mapping[str, Any]) -> None:
    assert list(got) == list(want)
    for name, array in got.items():
        if array.dtype.kind in "fc":
            np.testing.assert_allclose(array, want[name], rtol=1e-4, atol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(array, want[name], err_msg=name)


# --- the signature and predictions -----------------------------------------------------------


def test_detects_and_records_a_signature_with_a_batch_dimension(
    built: Built, model: CheckedModel
) -> None:
    assert default_runtimes().detect(built.path).format == built.format
    signature = model.signature
    assert signature == built.info.signature
    assert isinstance(model, LoadedModel)
    assert signature.inputs and signature.outputs
    for spec in (*signature.inputs, *signature.outputs):
        assert spec.shape is not None and len(spec.shape) >= 1, spec
        assert spec.shape[0] == -1, f"{spec.name} has no dynamic batch dimension"
    names = [spec.name for spec in (*signature.inputs, *signature.outputs)]
    assert len(set(names)) == len(names)


def test_predicts_every_output_with_its_declared_datatype_and_shape(
    built: Built, model: CheckedModel
) -> None:
    result = model.predict(built.inputs)

    assert list(result) == model.signature.output_names()
    for spec in model.signature.outputs:
        array = result[spec.name]
        want = np.dtype(object) if spec.datatype is DataType.BYTES else spec.datatype.numpy
        assert array.dtype == want, spec.name
        assert spec.accepts_shape(array.shape), (spec.name, array.shape)
        assert array.shape[0] == ROWS


def test_a_batch_of_one_and_of_n_agree_with_row_by_row(
    built: Built, model: CheckedModel, expected: Tensors
) -> None:
    _assert_close(model.predict(built.inputs), expected)
    _assert_close(model.predict(_rows(built.inputs, 2, 3)), _rows(expected, 2, 3))


def test_requested_outputs(built: Built, model: CheckedModel, expected: Tensors) -> None:
    names = model.signature.output_names()
    cases: list[tuple[list[str] | None, list[str]]] = [
        (None, names),
        ([], names),
        *(([name], [name]) for name in names),
        (names[::-1], names[::-1]),
        ([names[-1], names[0], names[-1]], list(dict.fromkeys([names[-1], names[0]]))),
    ]
    for asked, given in cases:
        result = model.predict(built.inputs, asked)
        assert list(result) == given, asked
        _assert_close(result, {name: expected[name] for name in given})


def test_an_unknown_output_is_refused_naming_the_valid_ones(
    built: Built, model: CheckedModel
) -> None:
    first = model.signature.output_names()[0]
    with pytest.raises(InvalidInput, match=rf"unknown output 'nope'; the model gives '{first}'"):
        model.predict(built.inputs, [first, "nope"])


# --- inputs that do not fit ------------------------------------------------------------------


def _missing(inputs: Tensors, spec: TensorSpec) -> tuple[Tensors, str]:
    return {k: v for k, v in inputs.items() if k != spec.name}, rf"missing input '{spec.name}'"


def _extra(inputs: Tensors, _spec: TensorSpec) -> tuple[Tensors, str]:
    return {**inputs, "stowaway": np.zeros(ROWS, np.float32)}, r"unknown input 'stowaway'"


def _wrong_dtype(inputs: Tensors, spec: TensorSpec) -> tuple[Tensors, str]:
    array = inputs[spec.name]
    if spec.datatype is DataType.BYTES:
        wrong = np.zeros(array.shape, np.float32)
    else:
        wrong = array.astype(np.float32 if array.dtype == np.float64 else np.float64)
    return {**inputs, spec.name: wrong}, rf"input '{spec.name}': expected datatype"


def _wrong_rank(inputs: Tensors, spec: TensorSpec) -> tuple[Tensors, str]:
    return {
        **inputs,
        spec.name: inputs[spec.name][..., None],
    }, rf"input '{spec.name}': expected shape"


MISFITS = {
    "missing": _missing,
    "extra": _extra,
    "wrong_dtype": _wrong_dtype,
    "wrong_rank": _wrong_rank,
}


@pytest.mark.parametrize("misfit", list(MISFITS))
def test_inputs_that_do_not_fit_are_refused_naming_the_input(
    built: Built, model: CheckedModel, misfit: str
) -> None:
    spec = model.signature.inputs[0]
    inputs, message = MISFITS[misfit](built.inputs, spec)
    with pytest.raises(InvalidInput, match=message):
        model.predict(inputs)
    with pytest.raises(InvalidInput, match=message):
        model.validate(inputs)


def test_text_inputs_may_be_str_or_bytes(built: Built, model: CheckedModel) -> None:
    texts = [spec for spec in model.signature.inputs if spec.datatype is DataType.BYTES]
    if not texts:
        pytest.skip(f"{built.format}'s model takes no BYTES input")
    as_str = {
        name: np.array([item.decode() for item in array], dtype=object) if name in texts else array
        for name, array in built.inputs.items()
    }
    _assert_close(model.predict(as_str), model.predict(built.inputs))


# --- close ------------------------------------------------------------------------------------


def test_close_refuses_later_calls_and_may_be_repeated(built: Built) -> None:
    with built.load() as loaded:
        loaded.predict(_rows(built.inputs, 0, 1))
    with pytest.raises(Unavailable, match="closed"):
        loaded.predict(built.inputs)
    with pytest.raises(Unavailable, match="closed"):
        loaded.run_validated(built.inputs)
    loaded.close()
    assert loaded.predictor is None


# --- the batch path validates each request once ----------------------------------------------


class _CountingSignature(Signature):
    """A signature that records each ``validate`` (as the number of rows it checked)."""

    checked: list[int]  # set per instance, in _Counting

    def validate(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        self.checked.append(len(next(iter(tensors.values()))))
        super().validate(tensors)


class _Counting:
    """A predictor the test owns, around the format's own: counts validations and runs."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        signature = _CountingSignature(inner.signature.inputs, inner.signature.outputs)
        object.__setattr__(signature, "checked", [])  # frozen: fields cannot be assigned
        self.signature = signature
        self.input_errors = inner.input_errors
        self.runs: list[int] = []

    def describe_error(self, error: Exception) -> str:
        return self.inner.describe_error(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Mapping[str, Any]:
        self.runs.append(len(next(iter(inputs.values()))))
        return self.inner.run(inputs, outputs)

    def close(self) -> None:
        self.inner.close()


def test_the_batcher_validates_each_request_once_and_never_the_batch(
    built: Built, expected: Tensors
) -> None:
    counting = _Counting(built.predictor())

    async def main() -> list[Tensors]:
        batcher = Batcher(CheckedModel(counting), ModelServeConfig(max_batch_size=64, instances=1))
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(_rows(built.inputs, i, i + 1)) for i in range(ROWS))
            )
        finally:
            await batcher.drain(10)

    with CheckedModel(counting):
        results = asyncio.run(main())

    for i, result in enumerate(results):
        _assert_close(result, _rows(expected, i, i + 1))
    assert counting.signature.checked == [1] * ROWS  # one check per request, none per batch
    assert sum(counting.runs) == ROWS
    assert len(counting.runs) < ROWS, "requests queued behind a busy instance were not merged"


# --- the wrapper itself, around predictors the test owns ---------------------------------------

_SIGNATURE = Signature(
    (TensorSpec("x", DataType.FP32, (-1, 2)),),
    (TensorSpec("y", DataType.FP32, (-1,)), TensorSpec("n", DataType.INT64, (-1,))),
)


class _Scripted:
    """A predictor that returns float64 and int32 where FP32 and INT64 are declared, or
    raises ``failure``."""

    signature = _SIGNATURE
    input_errors: tuple[type[Exception], ...] = (ValueError,)

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.closed = 0

    def describe_error(self, error: Exception) -> str:
        return f"<{error}>"

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Mapping[str, Any]:
        if self.failure is not None:
            raise self.failure
        x = inputs["x"].astype(np.float64)
        return {"y": x.sum(axis=1), "n": np.arange(len(x), dtype=np.int32)}

    def close(self) -> None:
        self.closed += 1


X = np.ones((3, 2), np.float32)


def test_outputs_are_cast_to_the_declared_datatypes() -> None:
    result = CheckedModel(_Scripted()).predict({"x": X})
    assert result["y"].dtype == np.float32 and result["n"].dtype == np.int64
    np.testing.assert_array_equal(result["y"], [2, 2, 2])


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        (ValueError("bad row 2"), InvalidInput, r"could not run on these inputs: <bad row 2>"),
        (KeyError("lost"), Internal, r"the model failed: KeyError: <'lost'>"),
        (InvalidModel("output too wide"), InvalidModel, r"^output too wide$"),
    ],
)
def test_framework_errors_are_translated_with_their_message(
    failure: Exception, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as raised:
        CheckedModel(_Scripted(failure)).predict({"x": X})
    if not isinstance(failure, InvalidModel):
        assert raised.value.__cause__ is failure


def test_close_reaches_the_predictor_once() -> None:
    predictor = _Scripted()
    with CheckedModel(predictor) as checked:
        pass
    checked.close()
    assert predictor.closed == 1


def test_a_registry_and_the_models_it_loads_are_context_managers(
    home: Path, iris_onnx: Path
) -> None:
    from modelport import Registry, Settings

    with Registry(Settings(home=home)) as reg:
        reg.push(iris_onnx, "iris", aliases=["production"])
        with reg.load("iris@production") as m:
            result = m.predict({"input": np.ones((2, 4), np.float32)})
        assert all(len(array) == 2 for array in result.values())
    with pytest.raises(Unavailable, match="closed"):
        m.predict({"input": np.ones((2, 4), np.float32)})
