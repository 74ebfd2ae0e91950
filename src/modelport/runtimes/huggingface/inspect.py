"""What a Hugging Face model directory holds, read from its JSON files alone (no framework).

Everything here is cheap and safe: it never imports transformers, never unpickles, and is
the place where a directory is refused for what its files say (custom code, no weights, no
tokenizer, a sentence-transformers pipeline we cannot reproduce) before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import InvalidInput, InvalidModel, UnsupportedFormat

__all__ = [
    "SUPPORTED_TASKS",
    "Layout",
    "SentenceConfig",
    "looks_like_huggingface",
    "read_layout",
    "resolve_task",
]

CLASSIFICATION = ("text-classification", "sentiment-analysis")
EMBEDDING = ("feature-extraction", "sentence-embedding")
SUPPORTED_TASKS = tuple(sorted(CLASSIFICATION + EMBEDDING))

_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# Files that belong to other frameworks or exports; the served model never reads them.
_FOREIGN_SUFFIXES = (".h5", ".msgpack", ".ot", ".onnx", ".onnx_data", ".gguf", ".tflite")
_FOREIGN_DIRECTORIES = frozenset({"onnx", "openvino", "coreml", "tf", "flax"})
# Pooling modes in the order sentence-transformers concatenates them.
_POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SERVED_POOLING = ("cls", "max", "mean", "mean_sqrt_len_tokens")


@dataclass(frozen=True, slots=True)
class SentenceConfig:
    """The sentence-transformers pipeline around the transformer: pooling, normalisation."""

    pooling: tuple[str, ...]
    normalize: bool
    max_seq_length: int | None
    lowercase: bool


@dataclass(frozen=True, slots=True)
class Layout:
    """A Hugging Face model directory, described by its files.

    ``model_dir`` is the transformer's folder relative to ``root`` (``"."`` usually; a
    sentence-transformers module path otherwise). ``files`` are what a push stores.
    """

    root: Path
    model_dir: str
    config: dict[str, Any]
    pickled: bool
    files: tuple[str, ...]
    sentence: SentenceConfig | None

    @property
    def architectures(self) -> list[str]:
        found = self.config.get("architectures") or []
        return [str(name) for name in found] if isinstance(found, list) else []


def looks_like_huggingface(path: Path) -> bool:
    """A directory with ``config.json`` (or ``modules.json``) next to weights or a tokenizer.

    Claims broken directories too, so that ``inspect`` can say what is missing; leaves
    MLflow models and TensorFlow SavedModels, which hold such files too, to their runtimes.
    """
    if not path.is_dir() or (path / "MLmodel").exists() or (path / "saved_model.pb").exists():
        return False
    if (path / "modules.json").is_file():
        return True
    names = (*_SAFE_WEIGHTS, *_PICKLED_WEIGHTS, *_TOKENIZER_FILES)
    return (path / "config.json").is_file() and any((path / name).is_file() for name in names)


def read_layout(path: Path) -> Layout:
    """Read and check the directory at ``path``.

    Raises:
        InvalidModel: unreadable JSON, no config, no weights, no tokenizer.
        UnsupportedFormat: custom code (``auto_map``), an MLflow model, or sentence-
            transformers modules or pooling modes modelport does not reproduce.
    """
    if not path.is_dir():
        raise InvalidModel(f"{path.name}: a Hugging Face model is a directory (save_pretrained)")
    if (path / "MLmodel").exists():
        raise UnsupportedFormat(f"{path.name} is an MLflow model; push it without --format")
    sentence, model_dir = None, "."
    if (path / "modules.json").is_file():
        sentence, model_dir = _read_sentence_modules(path)
    folder = path / model_dir
    config = _read_json(folder / "config.json", path)
    if not isinstance(config, dict):
        raise InvalidModel(f"{path.name}: config.json is not a JSON object")
    _refuse_custom_code(config, "config.json", path)
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        settings = _read_json(tokenizer_config, path)
        if isinstance(settings, dict):
            _refuse_custom_code(settings, "tokenizer_config.json", path)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise InvalidModel(
            f"{path.name}: no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.txt, "
            "...); save the tokenizer too: tokenizer.save_pretrained(directory)"
        )
    if any((folder / name).is_file() for name in _SAFE_WEIGHTS):
        pickled = False
    elif any((folder / name).is_file() for name in _PICKLED_WEIGHTS):
        pickled = True
    else:
        raise InvalidModel(
            f"{path.name}: no PyTorch weights (model.safetensors or pytorch_model.bin); save "
            "them with model.save_pretrained(directory)"
        )
    return Layout(path, model_dir, config, pickled, _stored_files(path, pickled), sentence)


def resolve_task(requested: str | None, layout: Layout) -> str:
    """The task to serve: ``requested`` (``--task``), else what the directory says.

    Raises:
        InvalidInput: an unknown task, a task the model cannot do, or none to infer.
    """
    supported = ", ".join(SUPPORTED_TASKS)
    architectures = layout.architectures
    classifier = any(name.endswith("ForSequenceClassification") for name in architectures)
    if requested is None:
        if layout.sentence is not None:
            return "sentence-embedding"
        if classifier:
            return "text-classification"
        if any(name.endswith("Model") for name in architectures):
            return "feature-extraction"
        raise InvalidInput(
            f"{layout.root.name}: cannot tell the task from its architectures "
            f"({', '.join(architectures) or 'none listed'}); give --task, one of: {supported}"
        )
    task = requested.strip().lower()
    if task not in SUPPORTED_TASKS:
        raise InvalidInput(f"unsupported task {requested!r}; supported tasks: {supported}")
    if task in CLASSIFICATION and (layout.sentence is not None or not classifier):
        raise InvalidInput(
            f"{layout.root.name} has no sequence-classification head (architectures: "
            f"{', '.join(architectures) or 'none listed'}), so it cannot serve {task!r}; "
            f"try --task {EMBEDDING[0]}"
        )
    return task


def _read_json(file: Path, root: Path) -> Any:
    if not file.is_file():
        raise InvalidModel(f"{root.name}: no {file.relative_to(root)} (not a transformers model)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModel(f"{root.name}: {file.relative_to(root)} is not valid JSON") from exc


def _refuse_custom_code(settings: dict[str, Any], name: str, root: Path) -> None:
    if "auto_map" in settings:
        raise UnsupportedFormat(
            f"{root.name}: {name} names custom code (auto_map), which runs only with "
            "trust_remote_code; modelport never runs code shipped with a model: use a "
            "model whose architecture is built into transformers"
        )


def _read_sentence_modules(root: Path) -> tuple[SentenceConfig, str]:
    modules = _read_json(root / "modules.json", root)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InvalidModel(f"{root.name}: modules.json is not a list of modules")
    paths: dict[str, str] = {}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Normalize") or kind in paths:
            raise UnsupportedFormat(
                f"{root.name}: sentence-transformers module {module.get('type')!r} is not "
                "supported; modelport serves Transformer, Pooling and Normalize pipelines"
            )
        paths[kind] = str(module.get("path") or ".")
    if "Transformer" not in paths or "Pooling" not in paths:
        raise UnsupportedFormat(
            f"{root.name}: modules.json needs a Transformer and a Pooling module"
        )
    for kind in ("Transformer", "Pooling"):
        folder = (root / paths[kind]).resolve()
        if not folder.is_relative_to(root.resolve()):
            raise InvalidModel(f"{root.name}: modules.json points outside the model directory")
    pooling = _read_json(root / paths["Pooling"] / "config.json", root)
    bert = root / paths["Transformer"] / "sentence_bert_config.json"
    settings = _read_json(bert, root) if bert.is_file() else {}
    if not isinstance(pooling, dict) or not isinstance(settings, dict):
        raise InvalidModel(f"{root.name}: a sentence-transformers config is not a JSON object")
    length = settings.get("max_seq_length")
    config = SentenceConfig(
        pooling=_pooling_modes(pooling, root),
        normalize="Normalize" in paths,
        max_seq_length=length if isinstance(length, int) and length > 0 else None,
        lowercase=bool(settings.get("do_lower_case", False)),
    )
    return config, paths["Transformer"]


def _pooling_modes(config: dict[str, Any], root: Path) -> tuple[str, ...]:
    declared = config.get("pooling_mode")
    if isinstance(declared, str):
        modes: tuple[str, ...] = (declared,)
    elif isinstance(declared, list):
        modes = tuple(str(mode) for mode in declared)
    else:
        modes = tuple(mode for key, mode in _POOLING_MODES.items() if config.get(key))
    modes = modes or ("mean",)
    for mode in modes:
        if mode not in SERVED_POOLING:
            raise UnsupportedFormat(
                f"{root.name}: pooling mode {mode!r} is not supported; modelport pools with "
                f"{', '.join(SERVED_POOLING)}"
            )
    return modes


def _stored_files(root: Path, pickled: bool) -> tuple[str, ...]:
    """Every file of the directory the model may read, relative to ``root``.

    Hidden files, other frameworks' weights and exports are left out, and so are pickled
    weights when safetensors are there (they would never be read).
    """
    files = []
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        parts = relative.parts
        if not file.is_file() or any(part.startswith(".") for part in parts):
            continue
        if parts[0] in _FOREIGN_DIRECTORIES or file.name.endswith(_FOREIGN_SUFFIXES):
            continue
        if not pickled and file.name.startswith("pytorch_model") and ".bin" in file.name:
            continue
        files.append(relative.as_posix())
    return tuple(files)
