"""The ``huggingface_onnx`` runtime: Hugging Face text models exported to ONNX, text in.

The directory (see ``huggingface.onnx_layout``) is what ``modelport convert minilm@1 --to
onnx`` makes of a ``huggingface`` version: it serves the same signature (``text`` BYTES
``[-1]`` in; ``embedding``, or ``label`` and ``probabilities``, out) with the ``tokenizers``
library and onnxruntime only. PyTorch and transformers are never imported, so a server of
these models needs neither installed (``pip install 'modelport[huggingface-onnx]'``).

The graph is loaded by the ``onnx`` runtime itself, so it takes the same session options
(threads, ``graph_optimization_level``, ``execution_mode``) and shares its weights between
worker processes the same way. Input and output names are read from the settings file and
checked against the graph, never node names: a graph rewritten by an optimization recipe
(fused attention, int8) serves unchanged as long as it keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import Internal, InvalidInput, InvalidModel, MissingDependency
from modelport.runtimes.base import LoadOptions, ModelFiles, ModelInfo, PushOptions
from modelport.runtimes.checked import CheckedModel
from modelport.runtimes.huggingface.onnx_layout import (
    GRAPH_FILE,
    TOKENIZER_FILE,
    OnnxTextSettings,
    looks_like_onnx_text,
)
from modelport.runtimes.huggingface.onnx_model import OnnxTextModel
from modelport.runtimes.onnx.inspect import inspect_model
from modelport.runtimes.onnx.runtime import OnnxRuntime
from modelport.types import Signature

__all__ = ["HuggingFaceOnnxRuntime"]

_PROBE = "modelport checks that the model runs"


class HuggingFaceOnnxRuntime:
    """The ``huggingface_onnx`` format: ``model.onnx`` + ``modelport_hf.json`` + tokenizer."""

    format = "huggingface_onnx"
    extra = "huggingface-onnx"

    def detect(self, path: Path) -> bool:
        """A directory holding ``model.onnx`` and ``modelport_hf.json``. Never parses."""
        try:
            return looks_like_onnx_text(path)
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the directory, load it once (a short and a full-length probe text) and
        describe it; the settings file is recorded as the version's metadata.

        Raises:
            InvalidModel: a broken settings file, graph or tokenizer, a graph whose inputs or
                output are not the ones the settings name, or one that fails on the probe.
            InvalidInput: a ``--signature``, ``--example`` or ``--task`` (all follow from the
                settings file).
            MissingDependency: the ``tokenizers`` library is not installed.
        """
        if options.signature is not None or options.example is not None or options.task:
            raise InvalidInput(
                "a converted Hugging Face model's signature and task are recorded in its "
                "modelport_hf.json; drop --signature, --example and --task"
            )
        if not path.is_dir():
            raise InvalidModel(f"{path.name}: a huggingface_onnx model is a directory")
        settings = OnnxTextSettings.read(path)
        graph = inspect_model(path)
        _check_graph(path.name, graph.signature, settings)
        with CheckedModel(self.load(path, LoadOptions())) as served:
            texts = [_PROBE.encode(), ((_PROBE + " ") * settings.max_length).encode()]
            try:
                served.predict({"text": np.array(texts, dtype=object)})
            except (InvalidInput, Internal) as exc:
                raise InvalidModel(f"{path.name}: the model fails on a probe text: {exc}") from exc
            signature = served.signature
        files = ModelFiles(path, ".", graph.files.paths)
        return ModelInfo(files, signature, settings.to_dict())

    def load(self, path: Path, options: LoadOptions) -> OnnxTextModel:
        """Load the directory: the tokenizer from ``tokenizer.json``, the graph through the
        ``onnx`` runtime with ``options`` (threads, extra, ``derived_dir``).

        Raises:
            InvalidModel: as for ``inspect``.
            InvalidInput: session options onnxruntime does not know.
            MissingDependency: ``tokenizers`` or onnxruntime is not installed.
        """
        settings = OnnxTextSettings.read(path)
        tokenizer = _tokenizer(path, settings)
        graph = OnnxRuntime().load(path / GRAPH_FILE, options)
        try:
            _check_graph(path.name, graph.signature, settings)
        except InvalidModel:
            graph.close()
            raise
        return OnnxTextModel(tokenizer, graph, settings)


def _check_graph(name: str, graph: Signature, settings: OnnxTextSettings) -> None:
    """The graph takes exactly the settings' inputs (int64) and gives their output."""
    takes = {spec.name: spec.datatype.value for spec in graph.inputs}
    wanted = dict.fromkeys(settings.inputs, "INT64")
    if takes != wanted:
        raise InvalidModel(
            f"{name}: {GRAPH_FILE} takes {takes} where modelport_hf.json says {wanted}"
        )
    if settings.output not in graph.output_names():
        raise InvalidModel(
            f"{name}: {GRAPH_FILE} gives {graph.output_names()}, not the output "
            f"{settings.output!r} modelport_hf.json names"
        )


def _tokenizer(path: Path, settings: OnnxTextSettings) -> Any:
    """The fast tokenizer, padding to the batch's longest text and truncating as the
    source did. Both are set here, once: setting them during calls races other threads."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise MissingDependency(
            "serving converted Hugging Face models needs the tokenizers library, which is "
            "missing: pip install 'modelport[huggingface-onnx]'"
        ) from exc
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers raises plain Exception for unreadable files
        raise InvalidModel(
            f"{path.name}: {TOKENIZER_FILE} could not be loaded: {str(exc)[:200]}"
        ) from exc
    # The file may carry the padding and truncation of whoever saved it (MiniLM's pads every
    # text to 128 tokens); the source tokenized with its own, recorded in the settings.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.enable_truncation(settings.max_length, direction=settings.truncation_side)
    tokenizer.enable_padding(
        direction=settings.padding_side,
        pad_id=settings.pad_id,
        pad_type_id=settings.pad_type_id,
        pad_token=settings.pad_token,
    )
    return tokenizer
