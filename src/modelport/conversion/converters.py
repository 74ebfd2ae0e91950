"""The table of converters: which library turns each source format into ONNX.

- ``skops``, ``sklearn_pickle``: skl2onnx; classifiers without ZipMap, so ``label`` and
  ``probabilities`` are tensors;
- ``xgboost``: onnxmltools, on the trees up to the best iteration (as the runtime predicts);
- ``lightgbm``: onnxmltools (float32 trees behind the source's float64 input);
- ``torchscript``: ``torch.onnx.export(dynamo=False)``: the dynamo exporter refuses
  ScriptModules;
- ``torch_export``: ``torch.onnx.export(dynamo=True)``, weights as external data;
- ``keras``: Keras' own ``model.export(format="onnx")`` (tf2onnx underneath);
- ``tf_savedmodel``: ``tf2onnx.convert.from_function`` on the ``serving_default`` signature;
- ``huggingface``: ``torch.onnx.export`` of the transformer with its pooling or softmax, into
  a ``huggingface_onnx`` directory that keeps the tokenizer (``conversion.huggingface_onnx``).

Each converter reads the source version's files (refusing what the runtime refuses) and
writes ``model.onnx`` (and any external data) into an empty directory. Frameworks are
imported inside the converter that needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from modelport.errors import InvalidInput, MissingDependency, UnsupportedFormat
from modelport.registry import ModelVersion

__all__ = [
    "TARGETS",
    "ConversionSource",
    "Converter",
    "Exported",
    "converter_for",
    "require",
    "supported_formats",
]

TARGETS = ("onnx",)
"""Formats modelport converts to."""


@dataclass(frozen=True, slots=True)
class ConversionSource:
    """What a converter works from: the version, its entry file, and where to write."""

    record: ModelVersion
    path: Path
    """The version's entry file in its checkout (read only)."""
    opset: int | None
    """The ONNX operator set asked for; ``None`` lets the converter choose."""
    directory: Path
    """An empty directory to write ``model.onnx`` (and external data) into."""


@dataclass(frozen=True, slots=True)
class Exported:
    """What a converter wrote, and with what."""

    path: Path
    converter: str
    converter_version: str
    exporter: str | None = None
    """For torch: ``dynamo`` (the torch.export-based exporter) or ``torchscript``."""
    format: str = "onnx"
    """The written model's format: ``onnx`` (``path`` is the graph), or ``huggingface_onnx``
    (``path`` is a directory around ``model.onnx``)."""

    @property
    def graph(self) -> Path:
        """The ONNX graph file itself."""
        return self.path if self.format == "onnx" else self.path / "model.onnx"


Converter = Callable[[ConversionSource], Exported]


def _sklearn(source: ConversionSource) -> Exported:
    from modelport.conversion.tabular_onnx import from_sklearn

    return from_sklearn(source)


def _xgboost(source: ConversionSource) -> Exported:
    from modelport.conversion.tabular_onnx import from_xgboost

    return from_xgboost(source)


def _lightgbm(source: ConversionSource) -> Exported:
    from modelport.conversion.tabular_onnx import from_lightgbm

    return from_lightgbm(source)


def _torchscript(source: ConversionSource) -> Exported:
    from modelport.conversion.torch_onnx import from_torchscript

    return from_torchscript(source)


def _torch_export(source: ConversionSource) -> Exported:
    from modelport.conversion.torch_onnx import from_exported_program

    return from_exported_program(source)


def _keras(source: ConversionSource) -> Exported:
    from modelport.conversion.tensorflow_onnx import from_keras

    return from_keras(source)


def _tf_savedmodel(source: ConversionSource) -> Exported:
    from modelport.conversion.tensorflow_onnx import from_saved_model

    return from_saved_model(source)


def _huggingface(source: ConversionSource) -> Exported:
    from modelport.conversion.huggingface_onnx import from_huggingface

    return from_huggingface(source)


_CONVERTERS: dict[str, Converter] = {
    "skops": _sklearn,
    "sklearn_pickle": _sklearn,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
    "torchscript": _torchscript,
    "torch_export": _torch_export,
    "keras": _keras,
    "tf_savedmodel": _tf_savedmodel,
    "huggingface": _huggingface,
}


def supported_formats() -> list[str]:
    """The source formats modelport converts to ONNX."""
    return sorted(_CONVERTERS)


def converter_for(record: ModelVersion, target: str) -> Converter:
    """The converter from ``record``'s format to ``target``.

    Raises:
        UnsupportedFormat: an unknown target, or a source format with no converter (naming
            the formats that have one).
        InvalidInput: the version already is in the target format.
    """
    if target not in TARGETS:
        raise UnsupportedFormat(
            f"cannot convert to {target!r}; modelport converts to: {', '.join(TARGETS)}"
        )
    if record.format == target:
        raise InvalidInput(f"{record.ref} is already {target.upper()}; there is nothing to convert")
    converter = _CONVERTERS.get(record.format)
    if converter is None:
        raise UnsupportedFormat(
            f"{record.ref}: there is no converter for {record.format!r} models; modelport "
            "converts these formats to ONNX: "
            f"{', '.join(supported_formats())}"
        )
    return converter


def require(module: str, what: str, extra: str) -> ModuleType:
    """Import a converter's library, or raise ``MissingDependency`` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".", 1)[0]
        raise MissingDependency(
            f"converting {what} to ONNX needs {package}: pip install 'modelport[{extra}]'"
        ) from exc
