"""Runtimes: one module per model format, found through a table by format name."""

from __future__ import annotations

from functools import cache

from modelport.runtimes.base import (
    LoadedModel,
    LoadOptions,
    ModelFiles,
    ModelInfo,
    PushOptions,
    Runtime,
    RuntimeTable,
)
from modelport.runtimes.checked import CheckedModel, Predictor

__all__ = [
    "CheckedModel",
    "LoadOptions",
    "LoadedModel",
    "ModelFiles",
    "ModelInfo",
    "Predictor",
    "PushOptions",
    "Runtime",
    "RuntimeTable",
    "default_runtimes",
]


def _onnx() -> Runtime:
    from modelport.runtimes.onnx.runtime import OnnxRuntime

    return OnnxRuntime()


def _skops() -> Runtime:
    from modelport.runtimes.sklearn.runtime import SkopsRuntime

    return SkopsRuntime()


def _sklearn_pickle() -> Runtime:
    from modelport.runtimes.sklearn.runtime import PickleRuntime

    return PickleRuntime()


def _xgboost() -> Runtime:
    from modelport.runtimes.boosting.runtime import XGBoostRuntime

    return XGBoostRuntime()


def _lightgbm() -> Runtime:
    from modelport.runtimes.boosting.runtime import LightGBMRuntime

    return LightGBMRuntime()


def _torchscript() -> Runtime:
    from modelport.runtimes.torch.runtime import TorchScriptRuntime

    return TorchScriptRuntime()


def _torch_export() -> Runtime:
    from modelport.runtimes.torch.runtime import TorchExportRuntime

    return TorchExportRuntime()


def _mlflow() -> Runtime:
    from modelport.runtimes.mlflow.runtime import MLflowRuntime

    return MLflowRuntime()


def _keras() -> Runtime:
    from modelport.runtimes.tensorflow.runtime import KerasRuntime

    return KerasRuntime()


def _tf_savedmodel() -> Runtime:
    from modelport.runtimes.tensorflow.runtime import SavedModelRuntime

    return SavedModelRuntime()


def _caffe() -> Runtime:
    from modelport.runtimes.caffe.runtime import CaffeRuntime

    return CaffeRuntime()


def _huggingface() -> Runtime:
    from modelport.runtimes.huggingface.runtime import HuggingFaceRuntime

    return HuggingFaceRuntime()


@cache
def default_runtimes() -> RuntimeTable:
    """The table of built-in runtimes. Framework modules are imported on first use only."""
    table = RuntimeTable()
    # Detection follows this order: MLflow directories wrap the other formats, so they come first.
    table.register("mlflow", _mlflow)
    table.register("onnx", _onnx)
    table.register("skops", _skops)
    table.register("sklearn_pickle", _sklearn_pickle)
    table.register("xgboost", _xgboost)
    table.register("lightgbm", _lightgbm)
    table.register("torchscript", _torchscript)
    table.register("torch_export", _torch_export)
    table.register("keras", _keras)
    table.register("tf_savedmodel", _tf_savedmodel)
    table.register("caffe", _caffe)
    table.register("huggingface", _huggingface)
    return table
