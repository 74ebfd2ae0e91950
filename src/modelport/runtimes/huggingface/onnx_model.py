"""The predictor of the ``huggingface_onnx`` format: a ``tokenizers`` tokenizer and an
ONNX graph, with no PyTorch or transformers anywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import Unavailable
from modelport.runtimes.huggingface.onnx_layout import OnnxTextSettings
from modelport.runtimes.huggingface.tasks import decode_texts, task_signature
from modelport.runtimes.onnx.model import OnnxModel
from modelport.types import Signature, Tensors

__all__ = ["OnnxTextModel"]

_ENCODING_FIELDS = {
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "type_ids",
}


class OnnxTextModel:
    """Text in, the task's outputs out: tokenize, pad to the longest text of the batch, run
    the graph, and (for classifiers) name the most likely label.

    ``run`` may be called from many threads at once: the tokenizer's padding and truncation
    are set once, before the first call, so ``encode_batch`` only reads it (and releases
    the GIL); onnxruntime's ``run`` is thread-safe.
    """

    def __init__(self, tokenizer: Any, graph: OnnxModel, settings: OnnxTextSettings) -> None:
        self._tokenizer = tokenizer
        self._graph: OnnxModel | None = graph
        self._settings = settings
        self._head = settings.head
        self._lowercase = settings.head.lowercase
        self._fields = [(name, _ENCODING_FIELDS[name]) for name in settings.inputs]
        self._labels = np.array([label.encode() for label in settings.head.labels], dtype=object)
        self._signature = task_signature(settings.head)
        self.input_errors: tuple[type[Exception], ...] = graph.input_errors

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        graph = self._graph
        return graph.describe_error(error) if graph is not None else str(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        graph = self._graph
        if graph is None:
            raise Unavailable("the model was closed; load it again to predict")
        texts = decode_texts(inputs["text"], self._lowercase)
        if not texts:
            return {name: self._head.empty(name) for name in outputs}
        encodings = self._tokenizer.encode_batch(texts)
        feed = {
            name: np.array([getattr(item, field) for item in encodings], dtype=np.int64)
            for name, field in self._fields
        }
        output = self._settings.output
        result = graph.run(feed, [output])[output]
        if not self._head.classifies:
            return {"embedding": result}
        served: dict[str, npt.NDArray[Any]] = {"probabilities": result}
        if "label" in outputs:
            served["label"] = self._labels[result.argmax(axis=1)]
        return {name: served[name] for name in outputs}

    def close(self) -> None:
        """Drop the session; calls already running finish."""
        graph, self._graph = self._graph, None
        if graph is not None:
            graph.close()
