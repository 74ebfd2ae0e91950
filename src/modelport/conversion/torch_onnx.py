"""PyTorch models (``torchscript``, ``torch_export``) to ONNX with ``torch.onnx.export``.

Which exporter, checked against torch 2.13:

- ``torch_export``: the default, torch.export-based exporter (``dynamo=True``) takes the
  ``ExportedProgram`` as it is; dimensions the program made dynamic stay dynamic. It writes
  the weights to an external data file beside ``model.onnx`` (``external_data=True``, its
  default), which the ONNX runtime's push path stores with the model after checking that
  it stays inside the model's directory.
- ``torchscript``: the dynamo exporter refuses ScriptModules ("Exporting a ScriptModule is
  not supported"), so the TorchScript-based exporter (``dynamo=False``, deprecated but
  public) is used, with the batch dimension of every input and output dynamic. (torch's
  private ``TS2EPConverter`` could feed the dynamo exporter instead, but makes every
  dimension dynamic and is no public API.) It writes one self-contained file.

Both exporters are noisy: deprecation warnings about themselves, progress and "torchvision
is not installed" lines on the log, tracebacks of opset conversions they fall back from.
The warnings are filtered by message and the exporters' loggers quietened to errors while
they run; what matters (the opset actually written) is checked by the caller instead.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from modelport.conversion.converters import ConversionSource, Exported, require
from modelport.errors import UnsupportedFormat
from modelport.jobs.inputs import generated_inputs
from modelport.runtimes.torch.runtime import read_exported_program, read_torchscript
from modelport.runtimes.torch.signature import exported_signature
from modelport.types import TensorSpec

__all__ = ["from_exported_program", "from_torchscript", "jit_log_on_stderr", "quiet_exporter"]

_FILE = "model.onnx"
_EXPORTER_WARNINGS = (
    # The TorchScript-based exporter warns that it is deprecated, from itself and its helpers.
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function"),
    # ScriptModule.forward has no Python signature to bind example inputs to; none is needed.
    (UserWarning, r"no signature found for <torch\.ScriptMethod"),
    # torch 2.13 deep-copies a loaded program's LeafSpec, a class it deprecated itself.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript")
_EXAMPLE_ROWS = 2  # not 1: an exporter may specialise a dimension of size 1


def from_torchscript(source: ConversionSource) -> Exported:
    """The TorchScript-based exporter on the loaded ScriptModule (see the module docstring)."""
    torch = _torch()
    record = source.record
    if record.metadata.get("output_structure") == "dict":
        raise UnsupportedFormat(
            f"{record.ref} returns a dict, which torch's TorchScript-based ONNX exporter cannot "
            "export (prim::DictConstruct); push the model as torch.export (.pt2), whose "
            "exporter can, and convert that"
        )
    module = read_torchscript(source.path, trusted=record.trust_pickle)
    signature = record.signature
    example = generated_inputs(signature, rows=_EXAMPLE_ROWS)
    args = tuple(torch.from_numpy(example[spec.name]) for spec in signature.inputs)
    specs = (*signature.inputs, *signature.outputs)
    dynamic_axes = {spec.name: _dynamic_axes(spec) for spec in specs if _dynamic_axes(spec)}
    path = source.directory / _FILE
    with quiet_exporter(), jit_log_on_stderr(torch):
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=[spec.name for spec in signature.inputs],
            output_names=signature.output_names(),
            dynamic_axes=dynamic_axes,
            opset_version=source.opset,
            verbose=False,  # None lets it print the graph to stdout when it fails
        )
    return Exported(path, "torch.onnx", str(torch.__version__), exporter="torchscript")


def from_exported_program(source: ConversionSource) -> Exported:
    """The torch.export-based exporter on the loaded ExportedProgram."""
    torch = _torch()
    program = read_exported_program(source.path, trusted=source.record.trust_pickle)
    own = exported_signature(program)  # the program's order, whatever --signature said
    path = source.directory / _FILE
    with quiet_exporter():
        torch.onnx.export(
            program,
            (),
            str(path),
            dynamo=True,
            external_data=True,
            input_names=[spec.name for spec in own.inputs],
            output_names=own.output_names(),
            opset_version=source.opset,
            verbose=False,
        )
    return Exported(path, "torch.onnx", str(torch.__version__), exporter="dynamo")


def _torch() -> Any:
    torch = require("torch", "PyTorch models", "torch")
    require("onnxscript", "PyTorch models", "torch")  # torch.onnx's exporters build on it
    return torch


def _dynamic_axes(spec: TensorSpec) -> dict[int, str]:
    """The dynamic dimensions of ``spec``, named; dimension 0 is the batch of every tensor."""
    dims = spec.shape or ()
    return {i: "batch" if i == 0 else f"{spec.name}_{i}" for i, d in enumerate(dims) if d < 0}


@contextlib.contextmanager
def jit_log_on_stderr(torch: Any) -> Iterator[None]:
    """Keep the TorchScript-based exporter's C++ log off stdout, and off once it is done.

    torch 2.13's exporter turns that log on for every export (it tests the function
    ``_jit_is_onnx_log_enabled`` for truth, not its result) and never off again; the log
    goes to stdout, where the exporter dumps the whole graph when an operator fails.
    """
    was_enabled = bool(torch._C._jit_is_onnx_log_enabled())
    torch._C._jit_set_onnx_log_output_stream("stderr")
    try:
        yield
    finally:
        torch._C._jit_set_onnx_log_output_stream("stdout")
        torch._C._jit_set_onnx_log_enabled(was_enabled)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Filter the exporters' own warnings and quieten their loggers to errors.

    Both are process-wide: a warning another thread raises meanwhile with one of these
    messages goes unseen, and the loggers' levels are restored afterwards.
    """
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for category, message in _EXPORTER_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
