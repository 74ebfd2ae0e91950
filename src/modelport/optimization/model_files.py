"""Where a model's ONNX graph is, and how an optimized copy of the model is laid out.

A plain ONNX version is one ``.onnx`` file. A ``huggingface_onnx`` version is a directory
(``model.onnx``, the tokenizer files, ``config.json``, ``modelport_hf.json``): recipes
rewrite only ``model.onnx`` and the copy keeps every other file unchanged, so that the
optimized version tokenizes and answers exactly as its parent does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import InvalidModel

__all__ = ["GRAPH_FILE", "HF_FORMAT", "ONNX_FORMATS", "ModelFiles", "size_on_disk"]

GRAPH_FILE = "model.onnx"
HF_FORMAT = "huggingface_onnx"
ONNX_FORMATS = ("onnx", HF_FORMAT)


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """A model as recipes see it: its graph file, and the directory around it when the
    format is a directory."""

    graph: Path
    directory: Path | None = None

    @classmethod
    def of(cls, entry: Path) -> ModelFiles:
        """The model whose runtime opens ``entry`` (a ``.onnx`` file or a directory)."""
        if entry.is_dir():
            graph = entry / GRAPH_FILE
            if not graph.is_file():
                raise InvalidModel(f"{entry.name} has no {GRAPH_FILE} to optimize")
            return cls(graph, entry)
        return cls(entry)

    @property
    def root(self) -> Path:
        """What is pushed: the directory, or the graph file."""
        return self.directory or self.graph

    def transformer_config(self) -> dict[str, Any] | None:
        """``config.json`` of a Hugging Face model (``model_type``, heads, hidden size)."""
        if self.directory is None or not (self.directory / "config.json").is_file():
            return None
        config: dict[str, Any] = json.loads((self.directory / "config.json").read_text())
        return config

    def copy_into(self, directory: Path, name: str) -> ModelFiles:
        """A copy laid out like this model in ``directory``, every file but the graph
        copied; the caller writes the new graph to the returned ``graph``."""
        if self.directory is None:
            return ModelFiles(directory / f"{name}.onnx")
        target = directory / name
        shutil.copytree(
            self.directory, target, ignore=shutil.ignore_patterns(GRAPH_FILE, f"{GRAPH_FILE}.data")
        )
        return ModelFiles(target / GRAPH_FILE, target)


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
