"""What each Hugging Face task gives back: its signature, and tensors from the model's output.

- ``text-classification`` (alias ``sentiment-analysis``): ``label`` BYTES ``[-1]`` (the
  most likely class's name from ``id2label``) and ``probabilities`` FP32
  ``[-1, num_labels]`` (softmax; sigmoid per label for ``multi_label_classification``).
- ``feature-extraction`` (alias ``sentence-embedding``): ``embedding`` FP32 ``[-1, dim]``,
  the token states pooled as the sentence-transformers config says (concatenating its
  modes, L2-normalised when it has a Normalize module), or by the mean over real tokens
  for a plain transformers model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput, InvalidModel
from modelport.runtimes.huggingface.inspect import CLASSIFICATION, Layout
from modelport.types import DataType, Signature, TensorSpec

__all__ = ["Head", "decode_texts", "head_for", "task_signature"]

TEXT = TensorSpec("text", DataType.BYTES, (-1,))


@dataclass(frozen=True, slots=True)
class Head:
    """How model outputs become the served tensors of one task; kept in version metadata."""

    task: str
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    pooling: tuple[str, ...] = ()
    normalize: bool = False
    lowercase: bool = False
    dim: int = 0

    @property
    def classifies(self) -> bool:
        return self.task in CLASSIFICATION

    def to_metadata(self) -> dict[str, Any]:
        if self.classifies:
            return {"labels": list(self.labels), "multi_label": self.multi_label}
        return {
            "pooling": list(self.pooling),
            "normalize": self.normalize,
            "lowercase": self.lowercase,
            "dim": self.dim,
        }

    @classmethod
    def from_metadata(cls, task: str, metadata: dict[str, Any]) -> Head:
        """The head ``to_metadata`` described.

        Raises:
            InvalidModel: the metadata lacks what the task needs.
        """
        try:
            if task in CLASSIFICATION:
                labels = tuple(str(label) for label in metadata["labels"])
                return cls(task, labels=labels, multi_label=bool(metadata["multi_label"]))
            return cls(
                task,
                pooling=tuple(str(mode) for mode in metadata["pooling"]),
                normalize=bool(metadata["normalize"]),
                lowercase=bool(metadata["lowercase"]),
                dim=int(metadata["dim"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModel(
                f"the recorded metadata of this {task} model is incomplete ({exc}); push it again"
            ) from exc

    def outputs(self, torch: Any, result: Any, attention_mask: Any) -> dict[str, npt.NDArray[Any]]:
        """The served tensors from the model's ``result`` for a batch with ``attention_mask``.

        Call under ``torch.inference_mode``.
        """
        if self.classifies:
            logits = result.logits.float()
            scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            best = scores.argmax(dim=-1).tolist()
            label = np.empty(len(best), dtype=object)
            label[:] = [self.labels[index].encode() for index in best]
            return {"label": label, "probabilities": scores.numpy().astype(np.float32)}
        pooled = self.pool(torch, result.last_hidden_state.float(), attention_mask)
        return {"embedding": pooled.numpy().astype(np.float32)}

    def pool(self, torch: Any, states: Any, attention_mask: Any) -> Any:
        """The sentence embeddings (a torch tensor) of token ``states`` ``[batch, tokens,
        hidden]``: pooled, concatenated, normalised as this head says. Traceable: the ONNX
        export (``conversion.huggingface_onnx``) puts exactly this inside the graph."""
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = torch.cat([_pool(torch, mode, states, mask) for mode in self.pooling], dim=1)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def empty(self, name: str) -> npt.NDArray[Any]:
        """Output ``name`` for a batch of no texts."""
        if name == "label":
            return np.empty((0,), dtype=object)
        width = len(self.labels) if name == "probabilities" else self.dim
        return np.empty((0, width), dtype=np.float32)


def decode_texts(array: npt.NDArray[Any], lowercase: bool) -> list[str]:
    """The strings of a BYTES array (``bytes`` as UTF-8, or ``str``), lowercased if asked.

    Raises:
        InvalidInput: an element that is not UTF-8 bytes or a string.
    """
    texts = []
    for index, item in enumerate(array.tolist()):
        if isinstance(item, bytes):
            try:
                text = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input 'text': element {index} is not UTF-8 text") from None
        elif isinstance(item, str):
            text = item
        else:
            kind = type(item).__name__
            raise InvalidInput(f"input 'text': element {index} is a {kind}, not a string")
        texts.append(text.lower() if lowercase else text)
    return texts


def head_for(task: str, config: Any, layout: Layout) -> Head:
    """The head of ``task`` for a model with this transformers ``config``."""
    if task in CLASSIFICATION:
        id2label = getattr(config, "id2label", None) or {}
        count = int(config.num_labels)
        labels = tuple(str(id2label.get(index, f"LABEL_{index}")) for index in range(count))
        multi = getattr(config, "problem_type", None) == "multi_label_classification"
        return Head(task, labels=labels, multi_label=multi)
    sentence = layout.sentence
    pooling = sentence.pooling if sentence else ("mean",)
    return Head(
        task,
        pooling=pooling,
        normalize=sentence.normalize if sentence else False,
        lowercase=sentence.lowercase if sentence else False,
        dim=int(config.hidden_size) * len(pooling),
    )


def task_signature(head: Head) -> Signature:
    """``text`` in; the task's outputs (see the module's docstring) out."""
    outputs: tuple[TensorSpec, ...]
    if head.classifies:
        outputs = (
            TensorSpec("label", DataType.BYTES, (-1,)),
            TensorSpec("probabilities", DataType.FP32, (-1, len(head.labels))),
        )
    else:
        outputs = (TensorSpec("embedding", DataType.FP32, (-1, head.dim)),)
    return Signature(inputs=(TEXT,), outputs=outputs)


def _pool(torch: Any, mode: str, states: Any, mask: Any) -> Any:
    # As sentence-transformers' Pooling computes each mode, so embeddings match its own.
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(mask == 0, -1e9).max(dim=1).values
    total = (states * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return total / (counts.sqrt() if mode == "mean_sqrt_len_tokens" else counts)
