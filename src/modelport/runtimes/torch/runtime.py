"""The ``torchscript`` and ``torch_export`` runtimes: PyTorch models served by PyTorch on CPU.

Safety: both loaders run code from the file, so both formats need ``--trust-pickle``.
``torch.jit.load`` is documented by PyTorch as able to "execute arbitrary code" from
malicious pickle data; its own unpickler rebuilds TorchScript types only, but the archive's
``code/`` is a program that runs at load (``__setstate__``) and on every call, with every
registered operator at hand, including ones that read host files (``aten::from_file``).
``torch.export.load`` (torch 2.13) parses symbolic shapes with ``sympy.sympify`` (``eval``),
retries sample inputs with ``torch.load(weights_only=False)``, unpickles tensor-subclass
weights and opaque constants, and ``.module()`` compiles the archive's ``guards_code`` with
``exec`` into a check run on every call; its docstring: "never load data from an untrusted
source".
Plain ``torch.save`` files are refused even with trust (see ``PICKLED_MESSAGE``). ONNX is
the format that loads without running code from the file.

Detection reads four bytes and needs no torch. ``.pt``/``.pth``/``.torchscript`` files that
start like a zip or a pickle are ``torchscript``'s, so a ``torch.save`` file meets a refusal
that says what to do instead of "unknown format"; ``.pt2`` is the suffix PyTorch gives
``torch.export.save`` archives, so any ``.pt2`` is ``torch_export``'s and a broken one is
reported as broken. ``inspect`` reads the zip directory (never a pickle) before trusting torch.

Threads: ``torch.set_num_threads`` is process-wide, so the first model loaded with
``intra_op_threads > 0`` sets it and later ones asking for another count keep it (with a
warning in the log). ``inter_op_threads`` is ignored: torch takes it once, before any work.

Concurrency: ``predict`` may run in several threads at once, without a lock. A TorchScript
call runs with the GIL released (its graph executor locks its own optimisation of the first
calls); an exported GraphModule is generated Python whose operators release the GIL. Neither
keeps state between inference calls, and ``torch.inference_mode`` is per thread.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from modelport.errors import InvalidInput, InvalidModel, MissingDependency
from modelport.runtimes.base import (
    LoadOptions,
    ModelFiles,
    ModelInfo,
    PushOptions,
    declared_signature,
)
from modelport.runtimes.threads import ProcessThreads
from modelport.runtimes.torch.model import TorchModel
from modelport.runtimes.torch.signature import (
    PICKLED_MESSAGE,
    archive_kind,
    check_export_archive,
    declared_export_signature,
    declared_script_signature,
    example_signature,
    exported_signature,
    forward_arguments,
    has_archive_magic,
    short_message,
)
from modelport.types import Signature

__all__ = [
    "TorchExportRuntime",
    "TorchScriptRuntime",
    "read_exported_program",
    "read_torchscript",
    "set_torch_threads",
]

log = logging.getLogger(__name__)

_SCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".torchscript"})
_OTHER_KIND = {
    "torchscript": "a TorchScript archive (torch.jit.save): name it .pt, or --format torchscript",
    "export": "a torch.export archive (torch.export.save): name it .pt2, or --format torch_export",
}


class TorchScriptRuntime:
    """The ``torchscript`` format: one file written by ``torch.jit.save``.

    TorchScript does not record shapes and dtypes reliably: the signature is ``--signature``,
    or what the model does with ``--example`` (see ``example_signature``). The version's
    metadata keeps it (inputs in ``forward``'s order, outputs in flattening order), with
    ``forward``'s argument names and the result's container (``output_structure``).
    """

    format = "torchscript"
    extra = "torch"

    def detect(self, path: Path) -> bool:
        """A ``.pt``/``.pth``/``.torchscript`` file starting like a zip or a pickle."""
        try:
            suffix = path.suffix.lower()
            return path.is_file() and suffix in _SCRIPT_SUFFIXES and has_archive_magic(path)
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the archive, load it (only when trusted) and describe it.

        Raises:
            InvalidModel: broken, a ``torch.save`` file, or no ``--trust-pickle``.
            InvalidInput: no ``--example`` or ``--signature``, or one that does not fit.
            MissingDependency: PyTorch is not installed.
            UnsupportedFormat: arguments or results that are not tensors of a served dtype.
        """
        _expect(path, "torchscript")
        if options.signature is None and options.example is None:
            declared_signature(options, "TorchScript")
        torch = _trusted_torch(path, options.trust_pickle, "torch.jit.load")
        module = _load_script(torch, path)
        arguments, required = forward_arguments(module)
        if options.signature is not None:
            signature = declared_script_signature(options.signature, arguments, required)
            structure = "declared"
        else:
            example = options.example or {}
            signature, structure = example_signature(torch, module, example, arguments, required)
        metadata = {
            "torch_version": str(torch.__version__),
            "arguments": arguments,
            "output_structure": structure,
            "signature": signature.to_dict(),
        }
        return ModelInfo(ModelFiles(path.parent, path.name, (path.name,)), signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> TorchModel:
        """``torch.jit.load(path, map_location="cpu")`` in eval mode; errors as ``inspect``."""
        _expect(path, "torchscript")
        torch = _trusted_torch(path, options.trust_pickle, "torch.jit.load")
        recorded = options.metadata.get("signature")
        if not isinstance(recorded, dict):
            raise InvalidModel(
                f"{path.name}: no signature was recorded for this TorchScript model; push it "
                "with --example x.npz or --signature sig.json"
            )
        signature = Signature.from_dict(recorded)
        set_torch_threads(torch, options)
        module = _load_script(torch, path)
        order = [spec.name for spec in signature.inputs]
        return TorchModel(torch, lambda tensors: module(*tensors), signature, order)


class TorchExportRuntime:
    """The ``torch_export`` format: a ``.pt2`` file written by ``torch.export.save``.

    The program records its signature (see ``exported_signature``); an explicit
    ``--signature`` must keep its names and dtypes and may narrow dynamic dimensions.
    """

    format = "torch_export"
    extra = "torch"

    def detect(self, path: Path) -> bool:
        """Any ``.pt2`` file; whether it is a sound archive is for ``inspect`` to say."""
        try:
            return path.is_file() and path.suffix.lower() == ".pt2"
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the archive, load it (only when trusted) and read its signature.

        Raises:
            InvalidModel: broken, not a torch.export archive, or no ``--trust-pickle``.
            InvalidInput: a ``--signature`` that does not match the program.
            MissingDependency: PyTorch is not installed.
            UnsupportedFormat: an AOTInductor package, or inputs/outputs not served.
        """
        torch, program, _ = _open_program(path, options.trust_pickle)
        signature = exported_signature(program)
        if options.signature is not None:
            signature = declared_export_signature(options.signature, signature)
        tree = program.call_spec.out_spec
        metadata = {
            "torch_version": str(torch.__version__),
            "output_structure": "tensor" if tree.is_leaf() else tree.type.__name__,
            "signature": signature.to_dict(),
        }
        return ModelInfo(ModelFiles(path.parent, path.name, (path.name,)), signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> TorchModel:
        """``torch.export.load(path).module()``; errors as for ``inspect``."""
        torch, program, module = _open_program(path, options.trust_pickle)
        described = exported_signature(program)
        recorded = options.metadata.get("signature")
        signature = Signature.from_dict(recorded) if isinstance(recorded, dict) else described
        tree = program.call_spec.in_spec
        set_torch_threads(torch, options)

        def call(tensors: list[Any]) -> Any:
            args, kwargs = tree.unflatten(tensors)
            return module(*args, **kwargs)

        return TorchModel(torch, call, signature, [spec.name for spec in described.inputs])


def read_torchscript(path: Path, *, trusted: bool) -> Any:
    """The ``ScriptModule`` in a ``torchscript`` file, in eval mode, for jobs that need the
    module itself (conversion to ONNX). ``trusted`` is the version's ``trust_pickle``.

    Raises:
        InvalidModel, MissingDependency: as for ``TorchScriptRuntime.load``.
    """
    _expect(path, "torchscript")
    return _load_script(_trusted_torch(path, trusted, "torch.jit.load"), path)


def read_exported_program(path: Path, *, trusted: bool) -> Any:
    """The ``ExportedProgram`` in a ``torch_export`` file, for jobs that need the program
    itself (conversion to ONNX). ``trusted`` is the version's ``trust_pickle``.

    Raises:
        InvalidModel, MissingDependency, UnsupportedFormat: as for ``TorchExportRuntime.load``.
    """
    return _open_program(path, trusted)[1]


_TORCH_THREADS = ProcessThreads("PyTorch")


def set_torch_threads(torch: Any, options: LoadOptions) -> None:
    """Apply ``options``' thread counts to torch, which holds them per process: the first
    model that asks sets them; later different asks are logged and left as they are."""
    if options.inter_op_threads < 0:
        raise InvalidInput(
            "inter_op_threads must be 0 (the runtime chooses) or more, not "
            f"{options.inter_op_threads}"
        )
    _TORCH_THREADS.apply(options.intra_op_threads, torch.set_num_threads)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependency(
            "serving PyTorch models needs PyTorch, which is missing: pip install 'modelport[torch]'"
        ) from exc
    return torch


def _expect(path: Path, wanted: str) -> None:
    kind = archive_kind(path)
    if kind == "pickle":
        raise InvalidModel(PICKLED_MESSAGE.format(name=path.name))
    if kind != wanted:
        raise InvalidModel(f"{path.name} is {_OTHER_KIND[kind]}")


def _trusted_torch(path: Path, trusted: bool, loader: str) -> Any:
    if not trusted:
        raise InvalidModel(
            f"{path.name}: {loader} can run code from the file, so modelport takes it only "
            "with --trust-pickle (add it if you trust the file's source), or convert the "
            "model to ONNX (torch.onnx.export), which loads without running code"
        )
    return _import_torch()


def _load_script(torch: Any, path: Path) -> Any:
    try:
        # TorchScript is deprecated in torch 2.13 and every load warns; whoever pushed the
        # file cannot act on that here. catch_warnings swaps the process's filters, so a
        # warning raised by another thread meanwhile may go unseen: the lesser evil.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.load` is", category=DeprecationWarning
            )
            module = torch.jit.load(str(path), map_location="cpu")
        module.forward.schema  # noqa: B018  (a module with no forward fails here, not later)
    except Exception as exc:  # torch's errors for damaged archives share no narrower base
        message = f"{path.name} could not be loaded as TorchScript: {short_message(exc)}"
        raise InvalidModel(message) from exc
    return module.eval()


def _open_program(path: Path, trusted: bool) -> tuple[Any, Any, Any]:
    _expect(path, "export")
    check_export_archive(path)
    torch = _trusted_torch(path, trusted, "torch.export.load")
    try:
        # Through a file object, a file named other than .pt2 (--format) loads without a warning.
        with path.open("rb") as file:
            program = torch.export.load(file)
        module = program.module()
    except Exception as exc:  # torch's errors for damaged archives share no narrower base
        message = f"{path.name} could not be loaded as an exported program: {short_message(exc)}"
        raise InvalidModel(message) from exc
    return torch, program, module
