"""The predictor of the ``huggingface`` format: a tokenizer and a transformers model."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from modelport.errors import Unavailable
from modelport.runtimes.huggingface.tasks import Head, decode_texts, task_signature
from modelport.runtimes.torch.signature import short_message
from modelport.types import Signature, Tensors

__all__ = ["HuggingFaceModel"]


class HuggingFaceModel:
    """A tokenizer and a transformers model: the ``Predictor`` of the ``huggingface`` format.

    ``run`` takes ``text`` as a 1-D array of ``bytes`` (UTF-8) or ``str`` and may be
    called from many threads at once.
    """

    def __init__(self, torch: Any, tokenizer: Any, model: Any, metadata: dict[str, Any]) -> None:
        self._torch = torch
        self._tokenizer = tokenizer
        self._model: Any | None = model
        self._lock = threading.Lock()
        self._max_length = int(metadata["max_length"])
        self._lowercase = bool(metadata.get("lowercase", False))
        self._head: Head = Head.from_metadata(str(metadata["task"]), metadata)
        self._signature = task_signature(self._head)
        self.input_errors: tuple[type[Exception], ...] = (RuntimeError, ValueError, IndexError)

    @property
    def signature(self) -> Signature:
        return self._signature

    def describe_error(self, error: Exception) -> str:
        return short_message(error)

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        model = self._model
        if model is None:
            raise Unavailable("the model was closed; load it again to predict")
        texts = decode_texts(inputs["text"], self._lowercase)
        if not texts:
            return {name: self._head.empty(name) for name in outputs}
        torch = self._torch
        with self._lock:
            encoded = self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="pt",
            )
        with torch.inference_mode():
            result = model(**encoded)
            tensors = self._head.outputs(torch, result, encoded["attention_mask"])
        return {name: tensors[name] for name in outputs}

    def close(self) -> None:
        """Drop the model; its memory is freed once calls already running finish."""
        self._model = None
