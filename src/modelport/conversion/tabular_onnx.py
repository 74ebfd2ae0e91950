"""scikit-learn (skl2onnx), XGBoost and LightGBM (onnxmltools) models to ONNX.

The converted graphs take the source's input (``onnx_graph.conform`` renames and casts what
the converters name or type otherwise) and give the tabular outputs: ``label`` and
``probabilities`` as tensors for classifiers (skl2onnx's ZipMap, a list of dicts, is turned
off), ``prediction`` or ``output`` otherwise.
"""

from __future__ import annotations

from typing import Any

import onnx

from modelport.conversion.converters import ConversionSource, Exported, require
from modelport.errors import UnsupportedFormat
from modelport.runtimes.sklearn.runtime import read_estimator
from modelport.types import DataType, TensorSpec

__all__ = ["from_lightgbm", "from_sklearn", "from_xgboost"]

_SKL2ONNX_TYPES = {
    DataType.FP32: "FloatTensorType",
    DataType.FP64: "DoubleTensorType",
    DataType.INT64: "Int64TensorType",
    DataType.INT32: "Int32TensorType",
    DataType.BOOL: "BooleanTensorType",
    DataType.BYTES: "StringTensorType",
}
_FILE = "model.onnx"


def from_sklearn(source: ConversionSource) -> Exported:
    """skl2onnx's ``convert_sklearn``, with the source's inputs as initial types.

    Raises:
        MissingDependency: scikit-learn or skl2onnx is not installed.
        InvalidModel: the source file is refused (an untrusted pickle, say).
        UnsupportedFormat: an input datatype skl2onnx does not take.
    """
    record = source.record
    sklearn_base = require("sklearn.base", "scikit-learn models", "sklearn")
    skl2onnx = require("skl2onnx", "scikit-learn models", "convert")
    data_types = require("skl2onnx.common.data_types", "scikit-learn models", "convert")
    estimator = read_estimator(source.path, record.format, trusted=record.trust_pickle)
    initial_types = [
        (spec.name, getattr(data_types, _skl2onnx_type(spec))(_dims(spec)))
        for spec in record.signature.inputs
    ]
    options = {"zipmap": False} if sklearn_base.is_classifier(estimator) else None
    model = skl2onnx.convert_sklearn(
        estimator, initial_types=initial_types, target_opset=source.opset, options=options
    )
    return _save(model, source, "skl2onnx", skl2onnx.__version__)


def from_xgboost(source: ConversionSource) -> Exported:
    """onnxmltools' ``convert_xgboost`` of the booster's trees up to its best iteration.

    ``multi:softmax`` boosters predict class indices; the runtime serves their softmax as
    ``probabilities``, so the converted trees get the same softmax.
    """
    xgboost = require("xgboost", "XGBoost models", "xgboost")
    onnxmltools, float_type = _onnxmltools("XGBoost models")
    record = source.record
    booster = xgboost.Booster(model_file=str(source.path))
    best = record.metadata.get("best_iteration")
    if isinstance(best, int):  # the runtime predicts up to it, as early stopping intends
        booster = booster[: best + 1]
    spec = _single_input(source)
    model = onnxmltools.convert_xgboost(
        booster, initial_types=[(spec.name, float_type(_dims(spec)))], target_opset=source.opset
    )
    if record.metadata.get("objective") == "multi:softmax":
        _set_post_transform(model, "SOFTMAX")
    return _save(model, source, "onnxmltools", onnxmltools.__version__)


def from_lightgbm(source: ConversionSource) -> Exported:
    """onnxmltools' ``convert_lightgbm`` of the booster (float32 trees, probabilities as
    tensors)."""
    lightgbm = require("lightgbm", "LightGBM models", "lightgbm")
    onnxmltools, float_type = _onnxmltools("LightGBM models")
    booster = lightgbm.Booster(model_file=str(source.path))
    spec = _single_input(source)
    model = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[(spec.name, float_type(_dims(spec)))],
        target_opset=source.opset,
        zipmap=False,
    )
    return _save(model, source, "onnxmltools", onnxmltools.__version__)


def _onnxmltools(what: str) -> tuple[Any, Any]:
    onnxmltools = require("onnxmltools", what, "convert")
    data_types = require("onnxmltools.convert.common.data_types", what, "convert")
    return onnxmltools, data_types.FloatTensorType


def _single_input(source: ConversionSource) -> TensorSpec:
    (spec,) = source.record.signature.inputs  # tabular runtimes take one 2-D input
    return spec


def _skl2onnx_type(spec: TensorSpec) -> str:
    name = _SKL2ONNX_TYPES.get(spec.datatype)
    if name is None:
        supported = ", ".join(datatype.value for datatype in _SKL2ONNX_TYPES)
        raise UnsupportedFormat(
            f"input {spec.name!r} is {spec.datatype.value}; skl2onnx takes {supported}"
        )
    return name


def _dims(spec: TensorSpec) -> list[int | None]:
    if spec.shape is None:
        return [None, None]
    return [None if dim < 0 else dim for dim in spec.shape]


def _set_post_transform(model: Any, transform: str) -> None:
    for node in model.graph.node:
        if node.op_type == "TreeEnsembleClassifier":
            for attribute in node.attribute:
                if attribute.name == "post_transform":
                    attribute.s = transform.encode()


def _save(model: Any, source: ConversionSource, converter: str, version: str) -> Exported:
    path = source.directory / _FILE
    onnx.save(model, str(path))
    return Exported(path, converter, str(version))
