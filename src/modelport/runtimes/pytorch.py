"""The ``torchscript`` and ``torch_export`` runtimes: PyTorch models served by PyTorch on CPU.

Safety: both loaders run code from the file, so both formats need ``--trust-pickle``.
``torch.jit.load`` is documented by PyTorch as able to "execute arbitrary code" from
malicious pickle data; its own unpickler rebuilds TorchScript types only, but the archive's
``code/`` is a program that runs at load (``__setstate__``) and on every call, with every
registered operator at hand, including ones that read host files (``aten::from_file``).
``torch.export.load`` (torch 2.13) ``exec``s guard code stored in the archive when
``.module()`` builds the module, parses symbolic shapes with ``sympy.sympify`` (``eval``),
retries sample inputs with ``torch.load(weights_only=False)``, and unpickles tensor-subclass
weights and opaque constants; its docstring says "never load data from an untrusted source".
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

Concurrency: ``predict`` may run in several threads at once. TorchScript modules and exported
GraphModules keep no state between inference calls, ``torch.inference_mode`` is per thread,
and torch's operators release the GIL while they compute.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.errors import InvalidInput, InvalidModel, MissingDependency, Unavailable
from modelport.runtimes.base import (
    LoadOptions,
    ModelFiles,
    ModelInfo,
    PushOptions,
    declared_signature,
)
from modelport.runtimes.pytorch_signature import (
    PICKLED_MESSAGE,
    TORCH_DATATYPES,
    archive_kind,
    bind_inputs,
    check_export_archive,
    example_outputs,
    example_spec,
    exported_signature,
    flatten_outputs,
    has_archive_magic,
    served_input,
    short_message,
)
from modelport.types import Signature, Tensors

__all__ = ["TorchExportRuntime", "TorchModel", "TorchScriptRuntime"]

log = logging.getLogger(__name__)

_SCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".torchscript"})
# What torch raises for inputs a model cannot take (shape and dtype mismatches, failed
# guards of exported programs, out-of-range indices); torch.jit.Error is a RuntimeError.
_RUN_ERRORS = (RuntimeError, ValueError, AssertionError, IndexError)
_WHAT = {
    "torchscript": "a TorchScript archive (torch.jit.save); name it .pt or use --format torchscript",
    "export": "a torch.export archive (torch.export.save); name it .pt2 or use --format torch_export",
}


class TorchScriptRuntime:
    """The ``torchscript`` format: one file written by ``torch.jit.save``.

    TorchScript does not record shapes and dtypes reliably, so the signature comes from
    ``--signature``, or from running the model once on ``--example``: inputs are named after
    the example's arrays, outputs ``output`` / ``output_0..n`` / a dict's keys, and the first
    dimension of each becomes the batch (-1).
    """

    format = "torchscript"
    extra = "torch"

    def detect(self, path: Path) -> bool:
        """A ``.pt``/``.pth``/``.torchscript`` file starting like a zip or a pickle."""
        try:
            return (
                path.is_file()
                and path.suffix.lower() in _SCRIPT_SUFFIXES
                and has_archive_magic(path)
            )
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the archive, load it (trusted only) and describe it.

        Raises:
            InvalidModel: not a TorchScript archive, broken, a ``torch.save`` file, or
                pushed without ``--trust-pickle``.
            InvalidInput: no ``--example`` or ``--signature``, or one that does not fit.
            MissingDependency: PyTorch is not installed.
            UnsupportedFormat: an output that is not a tensor or of a dtype not served.
        """
        _expect(path, "torchscript")
        if options.signature is None and options.example is None:
            declared_signature(options, "TorchScript")
        torch = _trusted_torch(path, options.trust_pickle, "torch.jit.load")
        module = _load_script(torch, path)
        arguments, required = _arguments(module)
        if options.signature is not None:
            signature = _bind_declared(options.signature, arguments, required)
        else:
            signature = _run_example(torch, module, options.example or {}, arguments, required)
        metadata = {
            "torch_version": str(torch.__version__),
            "arguments": arguments,
            "signature": signature.to_dict(),
        }
        return ModelInfo(ModelFiles(path.parent, path.name, (path.name,)), signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> TorchModel:
        """Load with ``torch.jit.load(map_location="cpu")`` in eval mode.

        Raises:
            InvalidModel, MissingDependency: as for ``inspect``; also when no signature was
                recorded at push time.
        """
        _expect(path, "torchscript")
        torch = _trusted_torch(path, options.trust_pickle, "torch.jit.load")
        recorded = options.metadata.get("signature")
        if not isinstance(recorded, dict):
            raise InvalidModel(
                f"{path.name}: no signature was recorded for this TorchScript model; push it "
                "with --example x.npz or --signature sig.json"
            )
        signature = Signature.from_dict(recorded)
        _THREADS.apply(torch, options)
        module = _load_script(torch, path)
        order = [spec.name for spec in signature.inputs]
        return TorchModel(torch, lambda tensors: module(*tensors), signature, order)


class TorchExportRuntime:
    """The ``torch_export`` format: a ``.pt2`` file written by ``torch.export.save``.

    The program records its signature: dtypes and shapes from its FakeTensors, dimensions
    made dynamic with ``torch.export.Dim`` as -1, inputs named after ``forward``'s arguments,
    outputs ``output`` / ``output_0..n`` / a dict's keys.
    """

    format = "torch_export"
    extra = "torch"

    def detect(self, path: Path) -> bool:
        """Any ``.pt2`` file; whether it is a sound archive is ``inspect``'s to say."""
        try:
            return path.is_file() and path.suffix.lower() == ".pt2"
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the archive, load it (trusted only) and read its signature.

        An explicit ``--signature`` must name the program's own inputs and outputs, with
        their dtypes; it may narrow dynamic dimensions.

        Raises:
            InvalidModel: not a torch.export archive, broken, or pushed without
                ``--trust-pickle``.
            InvalidInput: a ``--signature`` that does not match the program.
            MissingDependency: PyTorch is not installed.
            UnsupportedFormat: an AOTInductor package, or inputs/outputs not served.
        """
        torch, program, _ = _open_program(path, options.trust_pickle)
        described = exported_signature(program)
        signature = described
        if options.signature is not None:
            signature = _check_declared(options.signature, described)
        metadata = {"torch_version": str(torch.__version__), "signature": signature.to_dict()}
        return ModelInfo(ModelFiles(path.parent, path.name, (path.name,)), signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> TorchModel:
        """Load with ``torch.export.load(path).module()``; errors as for ``inspect``."""
        torch, program, module = _open_program(path, options.trust_pickle)
        described = exported_signature(program)
        recorded = options.metadata.get("signature")
        signature = Signature.from_dict(recorded) if isinstance(recorded, dict) else described
        tree = program.call_spec.in_spec
        _THREADS.apply(torch, options)

        def call(tensors: list[Any]) -> Any:
            args, kwargs = tree.unflatten(tensors)
            return module(*args, **kwargs)

        return TorchModel(torch, call, signature, [spec.name for spec in described.inputs])


class TorchModel:
    """A PyTorch module ready for inference, behind the ``LoadedModel`` protocol.

    Inputs reach torch without a copy when they are writable and C-contiguous (a model that
    writes into its inputs then writes into the caller's arrays); read-only or strided
    arrays are copied first. ``predict`` may be called from many threads at once.
    """

    def __init__(
        self,
        torch: Any,
        call: Callable[[list[Any]], Any],
        signature: Signature,
        input_order: list[str],
    ) -> None:
        self._torch = torch
        self._call: Callable[[list[Any]], Any] | None = call
        self._signature = signature
        self._input_order = input_order
        self._output_names = signature.output_names()
        self._output_dtypes = {spec.name: spec.datatype.numpy for spec in signature.outputs}

    @property
    def signature(self) -> Signature:
        return self._signature

    def predict(self, inputs: Tensors, outputs: list[str] | None = None) -> Tensors:
        """Run the model on ``inputs``; return the ``outputs`` named, or all when none are.

        Raises:
            InvalidInput: inputs that do not match the signature, unknown output names, or
                values the model rejects while running.
            InvalidModel: the model gave a result that does not fit its signature.
            Unavailable: the model was closed.
        """
        self._signature.validate(inputs)
        names = self._requested(outputs)
        call = self._call
        if call is None:
            raise Unavailable("the model was closed; load it again to predict")
        torch = self._torch
        tensors = [torch.from_numpy(_shareable(inputs[name])) for name in self._input_order]
        try:
            with torch.inference_mode():
                result = call(tensors)
        except _RUN_ERRORS as exc:
            message = f"the model could not run on these inputs: {short_message(exc)}"
            raise InvalidInput(message) from exc
        leaves = list(flatten_outputs(result))
        if len(leaves) != len(self._output_names) or not all(
            isinstance(leaf, torch.Tensor) for leaf in leaves
        ):
            raise InvalidModel(
                f"the model gave {len(leaves)} value(s) where its signature lists "
                f"{len(self._output_names)} tensor(s): {', '.join(self._output_names)}"
            )
        by_name = dict(zip(self._output_names, leaves, strict=True))
        return {name: self._to_numpy(by_name[name], self._output_dtypes[name]) for name in names}

    def close(self) -> None:
        """Drop the module; its memory is freed once calls already running finish."""
        self._call = None

    def _requested(self, outputs: list[str] | None) -> list[str]:
        known = self._output_names
        if not outputs:
            return known
        for name in outputs:
            if name not in known:
                valid = ", ".join(repr(output) for output in known)
                raise InvalidInput(f"unknown output {name!r}; the model gives {valid}")
        return list(dict.fromkeys(outputs))

    def _to_numpy(self, tensor: Any, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        if str(tensor.dtype) not in TORCH_DATATYPES:  # e.g. bfloat16 under a declared FP32
            tensor = tensor.to(self._torch.float32)
        array: npt.NDArray[Any] = tensor.detach().numpy()
        return array if array.dtype == dtype else array.astype(dtype)


class _ThreadSetting:
    """PyTorch's intra-op thread count, which is one per process: the first request wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chosen = 0

    def apply(self, torch: Any, options: LoadOptions) -> None:
        for field, value in (
            ("intra_op_threads", options.intra_op_threads),
            ("inter_op_threads", options.inter_op_threads),
        ):
            if value < 0:
                raise InvalidInput(f"{field} must be 0 (the runtime chooses) or more, not {value}")
        wanted = options.intra_op_threads
        with self._lock:
            if wanted == 0 or wanted == self._chosen:
                return
            if self._chosen:
                log.warning(
                    "PyTorch's intra-op threads are set per process and already %d; "
                    "a model asked for %d and runs with %d",
                    self._chosen,
                    wanted,
                    self._chosen,
                )
                return
            torch.set_num_threads(wanted)
            self._chosen = wanted


_THREADS = _ThreadSetting()


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
        raise InvalidModel(f"{path.name} is {_WHAT[kind]}")


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
        # TorchScript is deprecated in torch 2.13 and every load says so; the user cannot act
        # on it here. catch_warnings swaps the process's filters: a warning another thread
        # raises meanwhile may be hidden, which is the lesser evil for a load.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.load` is", category=DeprecationWarning
            )
            module = torch.jit.load(str(path), map_location="cpu")
        forward = module.forward
    except Exception as exc:  # torch's errors for damaged archives share no narrower base
        message = f"{path.name} could not be loaded as TorchScript: {short_message(exc)}"
        raise InvalidModel(message) from exc
    if not callable(forward):
        raise InvalidModel(f"{path.name}: the TorchScript module has no forward method")
    return module.eval()


def _arguments(module: Any) -> tuple[list[str], int]:
    """``forward``'s tensor arguments, in order, and how many of them are required."""
    names: list[str] = []
    required = 0
    for argument in list(module.forward.schema.arguments)[1:]:  # [0] is self
        kind = str(argument.type)
        optional = bool(argument.has_default_value())
        if kind not in ("Tensor", "Optional[Tensor]") or argument.kwarg_only:
            if optional:
                break
            raise InvalidInput(
                f"forward's argument {argument.name!r} is {kind}; modelport passes tensors only"
            )
        names.append(str(argument.name))
        required = required if optional else len(names)
    return names, required


def _run_example(
    torch: Any, module: Any, example: Tensors, arguments: list[str], required: int
) -> Signature:
    for name, array in example.items():
        served_input(name, array, "example input")
    order = bind_inputs(list(example), arguments, required)
    tensors = [torch.from_numpy(_shareable(example[name])) for name in order]
    try:
        with torch.inference_mode():
            result = module(*tensors)
    except _RUN_ERRORS as exc:
        message = f"the model could not run on the example: {short_message(exc)}"
        raise InvalidInput(message) from exc
    outputs = example_outputs(result, lambda value: isinstance(value, torch.Tensor)).outputs
    inputs = tuple(
        example_spec(name, tensor, "input") for name, tensor in zip(order, tensors, strict=True)
    )
    return Signature(inputs, outputs)


def _bind_declared(declared: Signature, arguments: list[str], required: int) -> Signature:
    for spec in (*declared.inputs, *declared.outputs):
        if spec.datatype not in TORCH_DATATYPES.values():
            raise InvalidInput(f"--signature: {spec.name!r} is {spec.datatype.value}, "
                               "which PyTorch models are not served with")  # fmt: skip
    order = bind_inputs([spec.name for spec in declared.inputs], arguments, required)
    by_name = {spec.name: spec for spec in declared.inputs}
    return Signature(tuple(by_name[name] for name in order), declared.outputs)


def _open_program(path: Path, trusted: bool) -> tuple[Any, Any, Any]:
    _expect(path, "export")
    check_export_archive(path)
    torch = _trusted_torch(path, trusted, "torch.export.load")
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:  # torch's errors for damaged archives share no narrower base
        message = f"{path.name} could not be loaded as an exported program: {short_message(exc)}"
        raise InvalidModel(message) from exc
    return torch, program, module


def _check_declared(declared: Signature, actual: Signature) -> Signature:
    for kind, mine, theirs in (
        ("input", declared.inputs, actual.inputs),
        ("output", declared.outputs, actual.outputs),
    ):
        own = {spec.name: spec.datatype for spec in theirs}
        if {spec.name: spec.datatype for spec in mine} != own:
            listed = ", ".join(f"{name!r} ({datatype.value})" for name, datatype in own.items())
            raise InvalidInput(f"--signature must list the program's own {kind}s: {listed}")
    return declared


def _shareable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array`` itself when torch can share it, else a C-contiguous copy."""
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C", copy=True)
