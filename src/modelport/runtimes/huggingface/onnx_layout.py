"""The ``huggingface_onnx`` directory: an ONNX graph with the tokenizer it was exported with.

::

    model.onnx           inputs input_ids, attention_mask[, token_type_ids]: int64
                         [batch, sequence]; one output: ``embedding`` (pooled and normalised
                         inside the graph) or ``probabilities`` (softmax/sigmoid inside)
    tokenizer.json       the fast tokenizer (the ``tokenizers`` library reads it alone)
    tokenizer_config.json, special_tokens_map.json, ...   kept as the source had them
    config.json          the transformers config (model_type, hidden_size, heads, ...)
    modelport_hf.json    what this module reads: ``OnnxTextSettings``

Written by ``conversion.huggingface_onnx``; rewritten in ``model.onnx`` only by optimization
recipes, which must keep its input and output names. Everything here is JSON and is read
without importing any framework.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import InvalidModel
from modelport.runtimes.huggingface.tasks import Head

__all__ = [
    "GRAPH_FILE",
    "SETTINGS_FILE",
    "TOKENIZER_FILE",
    "TOKEN_INPUTS",
    "OnnxTextSettings",
    "looks_like_onnx_text",
]

GRAPH_FILE = "model.onnx"
SETTINGS_FILE = "modelport_hf.json"
TOKENIZER_FILE = "tokenizer.json"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The graph's possible inputs, in the order the exporter takes them."""
_VERSION = 1
_SIDES = ("left", "right")


@dataclass(frozen=True, slots=True)
class OnnxTextSettings:
    """How text becomes the graph's inputs, and its output the served tensors."""

    head: Head
    """The task, and per task the labels or the pooling (as the ``huggingface`` format)."""
    max_length: int
    """Tokens per text at most, special tokens included (longer texts are truncated)."""
    inputs: tuple[str, ...]
    """The graph's inputs, a subset of ``TOKEN_INPUTS`` with ``input_ids`` and
    ``attention_mask``."""
    output: str
    """The graph's output: ``embedding`` or ``probabilities``."""
    padding_side: str = "right"
    truncation_side: str = "right"
    pad_id: int = 0
    pad_token: str = "[PAD]"  # noqa: S105  (a token, not a password)
    pad_type_id: int = 0
    source: dict[str, Any] | None = None
    """Where the graph came from (model type, library versions): informational."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "task": self.head.task,
            **self.head.to_metadata(),
            "max_length": self.max_length,
            "inputs": list(self.inputs),
            "output": self.output,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "pad_id": self.pad_id,
            "pad_token": self.pad_token,
            "pad_type_id": self.pad_type_id,
            "source": self.source or {},
        }

    def write(self, directory: Path) -> Path:
        path = directory / SETTINGS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: Path) -> OnnxTextSettings:
        """The settings in ``directory / modelport_hf.json``.

        Raises:
            InvalidModel: a missing or unreadable file, or one that lacks what serving needs.
        """
        path = directory / SETTINGS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidModel(f"{directory.name}: no {SETTINGS_FILE}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidModel(f"{directory.name}: {SETTINGS_FILE} is not valid JSON") from exc
        if not isinstance(data, dict):
            raise InvalidModel(f"{directory.name}: {SETTINGS_FILE} is not a JSON object")
        try:
            settings = cls(
                head=Head.from_metadata(str(data["task"]), data),
                max_length=int(data["max_length"]),
                inputs=tuple(str(name) for name in data["inputs"]),
                output=str(data["output"]),
                padding_side=str(data.get("padding_side", "right")),
                truncation_side=str(data.get("truncation_side", "right")),
                pad_id=int(data.get("pad_id", 0)),
                pad_token=str(data.get("pad_token", "[PAD]")),
                pad_type_id=int(data.get("pad_type_id", 0)),
                source=data.get("source") if isinstance(data.get("source"), dict) else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModel(
                f"{directory.name}: {SETTINGS_FILE} lacks or mistypes {exc}; convert the "
                "Hugging Face model again"
            ) from exc
        settings._check(directory.name)
        return settings

    def _check(self, name: str) -> None:
        problems = []
        if self.max_length < 1:
            problems.append(f"max_length {self.max_length} is below 1")
        if not {"input_ids", "attention_mask"} <= set(self.inputs) <= set(TOKEN_INPUTS):
            problems.append(f"inputs {list(self.inputs)} are not input_ids, attention_mask[, "
                            "token_type_ids]")  # fmt: skip
        wanted = "probabilities" if self.head.classifies else "embedding"
        if self.output != wanted:
            problems.append(f"output {self.output!r} is not {wanted!r} for {self.head.task}")
        if self.padding_side not in _SIDES or self.truncation_side not in _SIDES:
            problems.append("padding_side and truncation_side must be 'left' or 'right'")
        if problems:
            raise InvalidModel(f"{name}: {SETTINGS_FILE}: {'; '.join(problems)}")


def looks_like_onnx_text(path: Path) -> bool:
    """A directory with ``model.onnx`` and ``modelport_hf.json`` at its top. Never parses."""
    return path.is_dir() and (path / GRAPH_FILE).is_file() and (path / SETTINGS_FILE).is_file()
