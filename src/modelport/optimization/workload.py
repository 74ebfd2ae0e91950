"""The rows a measurement runs both graphs on, in the graph's own input names.

A plain ONNX model takes what its served signature says, so a ``Feed`` (or generated
inputs) is already the graph's input. A ``huggingface_onnx`` model is served with ``text``
in, but its graph takes token ids: the texts are tokenized here with the model's own
``tokenizer.json``, as its runtime does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.datasets.feed import Feed
from modelport.errors import InvalidInput
from modelport.jobs.inputs import generated_inputs
from modelport.optimization.model_files import ModelFiles
from modelport.types import Signature, Tensors

__all__ = ["DEFAULT_BATCH", "GENERATED_ROWS", "Workload", "sentences", "workload"]

DEFAULT_BATCH = 32
GENERATED_ROWS = 64
_WORDS = (
    "the",
    "model",
    "reads",
    "a",
    "short",
    "sentence",
    "about",
    "weather",
    "music",
    "travel",
    "food",
    "and",
    "sport",
    "while",
    "people",
    "ask",
    "simple",
    "questions",
    "on",
    "cheap",
    "fast",
    "trains",
    "near",
    "quiet",
    "rivers",
    "every",
    "morning",
)


@dataclass(frozen=True, slots=True)
class Workload:
    """Rows in graph-input form (axis 0 the row), their labels, and how to batch them."""

    inputs: Tensors
    labels: np.ndarray | None
    origin: str
    """``generated``, or the feed's source (e.g. ``digits@2:val``)."""
    batch: int
    """Rows per call for throughput (the fixed batch of a graph that has one)."""
    fixed: bool = False
    """The graph takes exactly ``batch`` rows per call."""
    embedding: bool = False
    """The model's float outputs are embeddings, compared by cosine, not by top-1."""

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, rows: int) -> Tensors:
        """The first ``rows`` rows, repeating the data when it has fewer."""
        return {
            name: np.ascontiguousarray(np.resize(array, (rows, *array.shape[1:])))
            if len(array) < rows
            else np.ascontiguousarray(array[:rows])
            for name, array in self.inputs.items()
        }


def workload(
    files: ModelFiles,
    signature: Signature,
    feed: Feed | None,
    *,
    batch: int = DEFAULT_BATCH,
    rows: int = GENERATED_ROWS,
) -> Workload:
    """The rows of ``feed`` (or generated ones) as ``files``'s graph takes them.

    Raises:
        InvalidInput: the feed's inputs are not the graph's.
    """
    import onnx

    graph_inputs = _graph_inputs(onnx.load(str(files.graph), load_external_data=False))
    fixed = {dims[0] for dims in graph_inputs.values() if dims and isinstance(dims[0], int)}
    is_fixed = len(fixed) == 1
    batch = fixed.pop() if is_fixed else batch
    if files.directory is not None and not set(graph_inputs) & {s.name for s in signature.inputs}:
        texts = _texts(feed) if feed is not None else sentences(rows)
        inputs = tokenize(files.directory, texts, graph_inputs)
        origin = feed.source if feed is not None else "generated sentences"
        settings = _hf_settings(files.directory)
        embedding = settings.get("task", "") in ("feature-extraction", "sentence-similarity") or (
            "pooling" in settings
        )
        return Workload(inputs, feed.labels if feed else None, origin, batch, is_fixed, embedding)
    if feed is None:
        return Workload(generated_inputs(signature, rows), None, "generated", batch, is_fixed)
    missing = sorted(set(graph_inputs) - set(feed.inputs))
    if missing:
        raise InvalidInput(
            f"{feed.source} gives inputs {sorted(feed.inputs)} where the model takes "
            f"{sorted(graph_inputs)}; map them with --input-map INPUT=COLUMN"
        )
    inputs = {name: feed.inputs[name] for name in graph_inputs}
    return Workload(inputs, feed.labels, feed.source, batch, is_fixed)


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` deterministic sentences of 6 to 24 words."""
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(_WORDS, size=int(rng.integers(6, 25)))).capitalize() + "."
        for _ in range(count)
    ]


def tokenize(directory: Path, texts: list[str], graph_inputs: dict[str, list[Any]]) -> Tensors:
    """Token ids, attention mask (and token types) for ``texts``, padded to the longest
    and cut at the model's ``max_length``, as int64: what a BERT-like graph takes."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(int(_hf_settings(directory).get("max_length", 128)))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(texts)
    arrays = {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
    }
    return {name: arrays[name] for name in graph_inputs if name in arrays}


def _texts(feed: Feed) -> list[str]:
    if len(feed.inputs) != 1:
        raise InvalidInput(f"{feed.source} must give one text column, not {sorted(feed.inputs)}")
    column = next(iter(feed.inputs.values())).reshape(-1)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in column]


def _hf_settings(directory: Path) -> dict[str, Any]:
    path = directory / "modelport_hf.json"
    settings: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return settings


def _graph_inputs(model: Any) -> dict[str, list[Any]]:
    initializers = {tensor.name for tensor in model.graph.initializer}
    return {
        value.name: [
            dim.dim_value if dim.HasField("dim_value") else None
            for dim in value.type.tensor_type.shape.dim
        ]
        for value in model.graph.input
        if value.name not in initializers
    }
