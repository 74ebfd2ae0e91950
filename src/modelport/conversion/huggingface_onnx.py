"""Hugging Face text models (``huggingface``) to ONNX with the tokenizer kept.

The result is a ``huggingface_onnx`` directory (``runtimes.huggingface.onnx_layout``) that
serves exactly the parent's signature: ``text`` in, and the same ``embedding`` or ``label``
and ``probabilities`` out. What the ``huggingface`` runtime computes after the transformer
is put inside the graph, so the ONNX output is the served output:

- embeddings: the sentence-transformers pooling modes (or the mean over real tokens for a
  plain transformers model), concatenated, L2-normalised when the source has a Normalize
  module: ``Head.pool``, the very code the parent serves with, traced;
- classifiers: softmax over the logits (sigmoid for multi-label); the runtime names the
  argmax's label from the settings file.

The transformer is loaded as the parent's runtime loads it (``open_model``: local files
only, no custom code, pickled weights only for a version pushed with ``--trust-pickle``),
with eager attention, which traces to plain MatMul/Softmax that onnxruntime's transformer
fusion recognises. It is exported by torch's TorchScript-based exporter (``dynamo=False``)
with ``batch`` and ``sequence`` dynamic on every input; the dynamo exporter specialises the
sequence length of BERT-like models' attention masks unless every dimension is given hints.

The tokenizer is saved as transformers saves it, which writes ``tokenizer.json`` for a fast
tokenizer; one with no fast version cannot be served without transformers, and is refused.

The parity check is ``conversion.text_parity``.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

from modelport.conversion.converters import ConversionSource, Exported, require
from modelport.conversion.torch_onnx import jit_log_on_stderr, quiet_exporter
from modelport.errors import InvalidModel, UnsupportedFormat
from modelport.runtimes import LoadOptions
from modelport.runtimes.huggingface.inspect import read_layout
from modelport.runtimes.huggingface.onnx_layout import (
    GRAPH_FILE,
    TOKEN_INPUTS,
    TOKENIZER_FILE,
    OnnxTextSettings,
)
from modelport.runtimes.huggingface.runtime import open_model
from modelport.runtimes.huggingface.tasks import Head

__all__ = ["from_huggingface"]

FORMAT = "huggingface_onnx"
DEFAULT_OPSET = 17
"""LayerNormalization is one operator from opset 17 on."""

_EXAMPLE = ["a short text", "a longer example text, for the exporter to trace padding with"]


def from_huggingface(source: ConversionSource) -> Exported:
    """Export the version at ``source.path`` into ``source.directory`` (module docstring).

    Raises:
        UnsupportedFormat: no fast tokenizer, or a model the exporter cannot trace.
        MissingDependency: torch, transformers or onnxscript is missing.
        InvalidModel: the source is refused as its runtime refuses it.
    """
    record, out = source.record, source.directory
    require("onnxscript", "Hugging Face models", "huggingface")
    layout = read_layout(source.path)
    if layout.pickled and not record.trust_pickle:
        raise UnsupportedFormat(  # the runtime refuses too; say it in convert's words
            f"{record.ref}: its weights are a pickle and it was pushed without --trust-pickle"
        )
    task, max_length = record.metadata.get("task"), record.metadata.get("max_length")
    if not isinstance(task, str) or not isinstance(max_length, int):
        raise InvalidModel(
            f"{record.ref}: no task or maximum length was recorded for this Hugging Face "
            "model; push it again"
        )
    head = Head.from_metadata(task, record.metadata)
    torch, transformers, tokenizer, model = open_model(
        layout, task, LoadOptions(trust_pickle=record.trust_pickle)
    )
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedFormat(
            f"{record.ref}: its tokenizer ({type(tokenizer).__name__}) has no fast version, "
            "which serving without transformers needs (tokenizer.json)"
        )
    model.set_attn_implementation("eager")
    names = [name for name in TOKEN_INPUTS if name in tokenizer.model_input_names]
    if not {"input_ids", "attention_mask"} <= set(names):
        raise UnsupportedFormat(
            f"{record.ref}: its tokenizer gives {tokenizer.model_input_names}, not input_ids "
            "and attention_mask"
        )
    output = "probabilities" if head.classifies else "embedding"
    example = tokenizer(
        _EXAMPLE, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names} | {output: {0: "batch"}}
    with quiet_exporter(), jit_log_on_stderr(torch), _quiet_tracer(torch):
        torch.onnx.export(
            _graph_module(torch, model, head, names),
            tuple(example[name] for name in names),
            str(out / GRAPH_FILE),
            dynamo=False,
            input_names=names,
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=source.opset or DEFAULT_OPSET,
            do_constant_folding=True,
            verbose=False,
        )
    _keep_tokenizer(tokenizer, layout.root / layout.model_dir, out, record.ref)
    shutil.copyfile(layout.root / layout.model_dir / "config.json", out / "config.json")
    OnnxTextSettings(
        head=head,
        max_length=max_length,
        inputs=tuple(names),
        output=output,
        padding_side=str(tokenizer.padding_side),
        truncation_side=str(tokenizer.truncation_side),
        pad_id=int(tokenizer.pad_token_id or 0),
        pad_token=str(tokenizer.pad_token or "[PAD]"),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        source={
            "model_type": layout.config.get("model_type"),
            "transformers_version": str(transformers.__version__),
            "torch_version": str(torch.__version__),
        },
    ).write(out)
    return Exported(out, "torch.onnx", str(torch.__version__), exporter="torchscript",
                    format=FORMAT)  # fmt: skip


@contextlib.contextmanager
def _quiet_tracer(torch: Any) -> Iterator[None]:
    """Filter the two warnings tracing a transformers model always gives; the parity check
    then proves the graph right on inputs of other lengths and batch sizes.

    - transformers' mask builder compares the mask's length with the key length, which are
      the same for an encoder (no cache): a constant in the trace, rightly;
    - the exporter warns that advanced indexing is wrong with negative indices; the traced
      models index with positions and token ids, never negative.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"Converting a tensor to a Python boolean", torch.jit.TracerWarning
        )
        warnings.filterwarnings("ignore", r"Exporting aten::index operator", UserWarning)
        yield


def _graph_module(torch: Any, model: Any, head: Head, names: list[str]) -> Any:
    """The transformer and what the runtime computes after it, as one module to trace."""

    class TextGraph(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            named = dict(zip(names, tensors, strict=True))
            result = self.model(**named)
            if head.classifies:
                logits = result.logits.float()
                return torch.sigmoid(logits) if head.multi_label else torch.softmax(logits, -1)
            return head.pool(torch, result.last_hidden_state.float(), named["attention_mask"])

    return TextGraph().eval()


def _keep_tokenizer(tokenizer: Any, folder: Any, out: Any, ref: str) -> None:
    """Save the tokenizer as transformers does (``tokenizer.json`` among its files); files
    the source had that the save did not write (a vocabulary) are copied as they were."""
    tokenizer.save_pretrained(str(out))
    if not (out / TOKENIZER_FILE).is_file():
        raise UnsupportedFormat(f"{ref}: its tokenizer could not be saved as {TOKENIZER_FILE}")
    for name in ("vocab.txt", "special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file() and not (out / name).exists():
            shutil.copyfile(folder / name, out / name)
