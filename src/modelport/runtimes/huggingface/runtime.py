"""The ``huggingface`` runtime: transformers text models served by PyTorch on CPU, text in.

A model is a directory written by ``save_pretrained`` (``config.json``, weights, tokenizer
files), or a sentence-transformers directory (``modules.json``, ``1_Pooling/...``). The
served model takes ``text`` (BYTES ``[-1]``, UTF-8 strings) and tokenizes it itself
(padding, truncation to the model's maximum length); see ``huggingface.tasks`` for what
each task gives back.

Safety: safetensors weights hold tensors only and load without ``--trust-pickle``;
``pytorch_model.bin`` is a pickle and needs it. Code shipped with a model (``auto_map``,
``trust_remote_code``) is never run. Everything is read from the directory alone:
``local_files_only=True`` and ``HF_HUB_OFFLINE=1``, so no load ever touches the network.

Threads: as the PyTorch runtimes, through their process-wide ``set_torch_threads``.

Concurrency: ``run`` may run in many threads at once. The fast tokenizer sets its
padding and truncation on the shared Rust object at every call (which raises "Already
borrowed" when two threads meet), so tokenization holds a lock; the forward pass runs under
``torch.inference_mode`` without one, with the GIL released by torch's operators.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import (
    Internal,
    InvalidInput,
    InvalidModel,
    MissingDependency,
    UnsupportedFormat,
)
from modelport.runtimes.base import (
    LoadOptions,
    ModelFiles,
    ModelInfo,
    PushOptions,
)
from modelport.runtimes.checked import CheckedModel
from modelport.runtimes.huggingface.inspect import (
    CLASSIFICATION,
    Layout,
    looks_like_huggingface,
    read_layout,
    resolve_task,
)
from modelport.runtimes.huggingface.model import HuggingFaceModel
from modelport.runtimes.huggingface.tasks import head_for
from modelport.runtimes.torch.runtime import set_torch_threads
from modelport.runtimes.torch.signature import short_message

__all__ = ["HuggingFaceRuntime", "open_model"]

_MISSING = (
    "serving Hugging Face models needs transformers and PyTorch, which are missing: "
    "pip install 'modelport[huggingface]'"
)
# Tokenizers that do not record a maximum length report a huge sentinel instead.
_NO_LIMIT = 1_000_000
_PROBE = "modelport checks that the model runs"


class HuggingFaceRuntime:
    """The ``huggingface`` format: a transformers (or sentence-transformers) directory.

    The version's metadata keeps the task, the transformer's folder, the maximum length,
    and per task the labels or the pooling; ``load`` rebuilds the served model from it.
    """

    format = "huggingface"
    extra = "huggingface"

    def detect(self, path: Path) -> bool:
        """A directory of ``config.json`` with weights or a tokenizer, or ``modules.json``."""
        try:
            return looks_like_huggingface(path)
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the directory, load the model once (probing a full-length input) and
        describe it.

        Raises:
            InvalidModel: broken files, or pickled weights without ``--trust-pickle``.
            InvalidInput: an unknown ``--task``, one the model cannot do, or a ``--signature``
                or ``--example`` (the signature follows from the task).
            UnsupportedFormat: custom code, or a model type transformers does not know.
            MissingDependency: transformers or PyTorch is not installed.
        """
        if options.signature is not None or options.example is not None:
            raise InvalidInput(
                "a Hugging Face model's signature follows from its task; drop --signature "
                "and --example, and choose the task with --task"
            )
        layout = read_layout(path)
        _check_trust(layout, options.trust_pickle)
        task = resolve_task(options.task, layout)
        torch, transformers, tokenizer, model = open_model(layout, task, LoadOptions())
        metadata: dict[str, Any] = {
            "task": task,
            "model_dir": layout.model_dir,
            "max_length": _max_length(layout, tokenizer, model.config),
            "weights": "pickle" if layout.pickled else "safetensors",
            "transformers_version": str(transformers.__version__),
        }
        metadata |= head_for(task, model.config, layout).to_metadata()
        served = CheckedModel(HuggingFaceModel(torch, tokenizer, model, metadata))
        probe = np.array([_PROBE.encode(), (_PROBE + " ") * metadata["max_length"]], object)
        try:
            result = served.predict({"text": probe})
        except (InvalidInput, Internal) as exc:
            raise InvalidModel(f"{path.name}: the model fails on a probe text: {exc}") from exc
        for spec in served.signature.outputs:
            if spec.shape is not None and result[spec.name].shape[1:] != spec.shape[1:]:
                raise InvalidModel(
                    f"{path.name}: output {spec.name!r} has shape {list(result[spec.name].shape)}"
                    f" where its config gives {spec.shape_text()}"
                )
        files = ModelFiles(path, ".", layout.files)
        return ModelInfo(files, served.signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> HuggingFaceModel:
        """Load the directory as ``inspect`` described it; errors as for ``inspect``."""
        layout = read_layout(path)
        _check_trust(layout, options.trust_pickle)
        metadata = options.metadata
        task = metadata.get("task")
        if not isinstance(task, str) or not isinstance(metadata.get("max_length"), int):
            raise InvalidModel(
                f"{path.name}: no task was recorded for this Hugging Face model; push it again"
            )
        torch, _, tokenizer, model = open_model(layout, task, options)
        return HuggingFaceModel(torch, tokenizer, model, metadata)


def _check_trust(layout: Layout, trusted: bool) -> None:
    if layout.pickled and not trusted:
        raise InvalidModel(
            f"{layout.root.name}: its weights are pytorch_model.bin, a pickle, and loading a "
            "pickle can run code from the file; modelport takes it only with --trust-pickle "
            "(add it if you trust the file's source), or save the weights as safetensors "
            "(model.save_pretrained(directory) writes model.safetensors), which hold tensors only"
        )


def _import_frameworks() -> tuple[Any, Any]:
    # Read when huggingface_hub is first imported; a user's own setting wins.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependency(_MISSING) from exc
    return torch, transformers


def open_model(layout: Layout, task: str, options: LoadOptions) -> tuple[Any, Any, Any, Any]:
    """torch, transformers, the tokenizer and the model for ``task``, in eval mode.

    The conversion to ONNX (``conversion.huggingface_onnx``) loads its source through this,
    so that it refuses exactly what serving refuses.

    Raises:
        MissingDependency, UnsupportedFormat, InvalidModel: as ``HuggingFaceRuntime.load``.
    """
    torch, transformers = _import_frameworks()
    set_torch_threads(torch, options)
    model_type = layout.config.get("model_type")
    # Checked first: for an unknown type, transformers' loaders guess and warn before failing.
    if model_type not in transformers.CONFIG_MAPPING:
        raise UnsupportedFormat(
            f"{layout.root.name}: transformers {transformers.__version__} has no built-in "
            f"model type {model_type!r} (config.json's model_type); modelport serves only "
            "architectures built into transformers"
        )
    tokenizer = _load_tokenizer(transformers, layout)
    return torch, transformers, tokenizer, _load_model(transformers, torch, layout, task)


def _load_tokenizer(transformers: Any, layout: Layout) -> Any:
    folder = layout.root / layout.model_dir
    try:
        with warnings.catch_warnings():
            # Deprecation notices about the saved files; whoever serves them cannot act here.
            warnings.simplefilter("ignore", FutureWarning)
            return transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False
            )
    except Exception as exc:  # tokenizer loaders raise many unrelated types for bad files
        message = f"{layout.root.name}: the tokenizer could not be loaded: {short_message(exc)}"
        raise InvalidModel(message) from exc


def _load_model(transformers: Any, torch: Any, layout: Layout, task: str) -> Any:
    folder = layout.root / layout.model_dir
    auto = (
        transformers.AutoModelForSequenceClassification
        if task in CLASSIFICATION
        else transformers.AutoModel
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model, info = auto.from_pretrained(
                str(folder),
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=not layout.pickled,
                dtype=torch.float32,
                output_loading_info=True,
            )
    except Exception as exc:  # safetensors, torch and config errors share no narrower base
        message = f"{layout.root.name}: the model could not be loaded: {short_message(exc)}"
        raise InvalidModel(message) from exc
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise InvalidModel(
            f"{layout.root.name}: the weights lack {len(missing)} tensor(s) the model needs "
            f"(e.g. {missing[0]}); they would be random"
        )
    return model.eval()


def _max_length(layout: Layout, tokenizer: Any, config: Any) -> int:
    if layout.sentence is not None and layout.sentence.max_seq_length is not None:
        return layout.sentence.max_seq_length
    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < _NO_LIMIT else []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else 512
