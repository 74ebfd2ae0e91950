"""Reading PyTorch model files without running them, and describing their signatures.

Archive checks use ``zipfile`` only, never pickle and never torch, so detection and the
refusals of unsafe or broken files work where PyTorch is not installed. The signature
helpers take torch objects (as ``Any``) that the runtime has already loaded.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from modelport.errors import InvalidInput, InvalidModel, UnsupportedFormat
from modelport.runtimes.base import last_error_line as short_message
from modelport.types import DataType, Signature, Tensors, TensorSpec

__all__ = [
    "TORCH_DATATYPES",
    "archive_kind",
    "check_export_archive",
    "declared_export_signature",
    "declared_script_signature",
    "example_signature",
    "exported_signature",
    "flatten_outputs",
    "forward_arguments",
    "has_archive_magic",
    "short_message",
]

# torch dtype (as ``str(dtype)``) -> the datatype served; anything else cannot be served.
TORCH_DATATYPES: dict[str, DataType] = {
    f"torch.{name}": DataType.parse(datatype)
    for name, datatype in (
        ("float32", "FP32"), ("float64", "FP64"), ("float16", "FP16"), ("int8", "INT8"),
        ("int16", "INT16"), ("int32", "INT32"), ("int64", "INT64"), ("uint8", "UINT8"),
        ("bool", "BOOL"),
    )
}  # fmt: skip
_SERVED = frozenset(TORCH_DATATYPES.values())
_ZIP_MAGIC = b"PK\x03\x04"
_EXPORT_RECORDS = ("archive_format", "archive_version", ".data/version", "models/model.json")
PICKLED_MESSAGE = (
    "{name} is a pickled PyTorch object (torch.save), and loading it runs code from the file; "
    "export it with torch.jit.script/trace + torch.jit.save, or torch.export + "
    "torch.export.save, or convert to ONNX; a state_dict alone has no architecture to serve "
    "(--trust-pickle does not help: unpickling needs the Python code that defined the model)"
)


def has_archive_magic(path: Path) -> bool:
    """Whether ``path`` starts like a zip archive or a pickle (legacy ``torch.save``)."""
    with path.open("rb") as file:
        head = file.read(4)
    return head == _ZIP_MAGIC or _is_pickle(head)


def _is_pickle(head: bytes) -> bool:
    # The PROTO opcode and a protocol torch.save writes (2 by default, up to 5).
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def archive_kind(path: Path) -> Literal["torchscript", "export", "pickle"]:
    """What a PyTorch file is, from its zip directory alone (nothing is unpickled).

    ``torchscript``: ``torch.jit.save`` (``code/`` and ``data.pkl``); ``export``:
    ``torch.export.save`` (``archive_format``, ``models/*.json``); ``pickle``: any other
    ``torch.save`` file, zip (``data.pkl``) or legacy pickle.

    Raises:
        InvalidModel: not a zip archive (truncated or corrupt), or a zip of none of these.
    """
    try:
        with path.open("rb") as file:
            if _is_pickle(file.read(4)):
                return "pickle"
        with zipfile.ZipFile(path) as archive:
            inner = {name.partition("/")[2] for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        message = f"{path.name} is not a PyTorch archive (not a zip file, or truncated): {exc}"
        raise InvalidModel(message) from None
    if "data.pkl" in inner and any(part.startswith("code/") for part in inner):
        return "torchscript"
    if "archive_format" in inner or any(
        part.startswith("models/") and part.endswith(".json") for part in inner
    ):
        return "export"
    if "data.pkl" in inner:
        return "pickle"
    raise InvalidModel(
        f"{path.name} is a zip archive but not a PyTorch model: it has no code/ (TorchScript), "
        "models/*.json (torch.export) or data.pkl (torch.save)"
    )


def check_export_archive(path: Path) -> None:
    """Check the layout ``torch.export.save`` writes, reading only its JSON.

    Broken archives get a one-line message here, before torch's loader (which logs a
    traceback and retries an old layout) sees them.

    Raises:
        InvalidModel: a record torch needs is missing, or the program is not valid JSON.
        UnsupportedFormat: an AOTInductor package (compiled native code).
    """
    with zipfile.ZipFile(path) as archive:
        inner = {name.partition("/")[2]: name for name in archive.namelist()}
        if any(part.startswith("data/aotinductor/") for part in inner):
            raise UnsupportedFormat(
                f"{path.name} is an AOTInductor package (compiled native code); modelport "
                "serves programs saved with torch.export.save"
            )
        missing = [part for part in _EXPORT_RECORDS if part not in inner]
        if missing:
            raise InvalidModel(
                f"{path.name} is not a complete torch.export archive: no {', '.join(missing)}"
            )
        try:
            program = json.loads(archive.read(inner["models/model.json"]))
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise InvalidModel(f"{path.name}: models/model.json is damaged: {exc}") from None
    if not isinstance(program, dict) or "graph_module" not in program:
        raise InvalidModel(f"{path.name}: models/model.json holds no exported program")


def _datatype(dtype: Any, role: str, name: str) -> DataType:
    found = TORCH_DATATYPES.get(str(dtype))
    if found is None:
        supported = ", ".join(key.removeprefix("torch.") for key in TORCH_DATATYPES)
        raise UnsupportedFormat(
            f"{role} {name!r} is {str(dtype).removeprefix('torch.')}, which modelport cannot "
            f"serve; supported dtypes: {supported}"
        )
    return found


def _spec(name: str, value: Any, role: str, *, batch: bool = False) -> TensorSpec:
    """A tensor's (or FakeTensor's) spec; symbolic dimensions, and with ``batch`` the first
    dimension, are -1."""
    dims = [dim if isinstance(dim, int) else -1 for dim in value.shape]
    if batch and dims:
        dims[0] = -1
    return TensorSpec(name, _datatype(value.dtype, role, name), tuple(dims))


def _output_names(kind: str, keys: Sequence[Any], count: int) -> list[str]:
    """``output`` for one tensor, the keys of a flat dict, else ``output_0`` … ``output_n``."""
    if kind == "tensor":
        return ["output"]
    names = [str(key) for key in keys]
    if kind == "dict" and len(names) == count and len(set(names)) == count:
        return names
    return [f"output_{index}" for index in range(count)]


def exported_signature(program: Any) -> Signature:
    """An ``ExportedProgram``'s user inputs and outputs, in the order the program takes them.

    dtypes and shapes come from the FakeTensors the export recorded (``meta["val"]``);
    dimensions made dynamic with ``torch.export.Dim`` are -1.

    Raises:
        UnsupportedFormat: an input or output that is not a tensor, or of a dtype not served.
    """
    nodes = {node.name: node for node in program.graph.nodes}
    specs: dict[str, list[TensorSpec]] = {"input": [], "output": []}
    graph_signature = program.graph_signature
    for role, entries in (
        ("input", graph_signature.input_specs),
        ("output", graph_signature.output_specs),
    ):
        for entry in entries:
            if entry.kind.name != f"USER_{role.upper()}":
                continue
            name = str(getattr(entry.arg, "name", entry.arg))
            node = nodes.get(name) if type(entry.arg).__name__ == "TensorArgument" else None
            value = None if node is None else node.meta.get("val")
            if not hasattr(value, "dtype"):
                raise UnsupportedFormat(
                    f"{role} {name!r} of the exported program is not a tensor; modelport "
                    "serves programs whose inputs and outputs are tensors"
                )
            specs[role].append(_spec(name, value, role))
    tree = program.call_spec.out_spec
    flat_dict = tree.type is dict and all(child.is_leaf() for child in tree.children())
    kind = "tensor" if tree.is_leaf() else "dict" if flat_dict else "sequence"
    names = _output_names(kind, tree.context if flat_dict else [], len(specs["output"]))
    outputs = zip(names, specs["output"], strict=True)
    return Signature(
        inputs=tuple(specs["input"]),
        outputs=tuple(TensorSpec(name, spec.datatype, spec.shape) for name, spec in outputs),
    )


def forward_arguments(module: Any) -> tuple[list[str], int]:
    """A TorchScript module's tensor arguments to ``forward``, in order, and how many are
    required. Arguments from the first non-tensor one with a default on are left out.

    Raises:
        UnsupportedFormat: a required argument that is not a tensor.
    """
    names: list[str] = []
    required = 0
    for argument in list(module.forward.schema.arguments)[1:]:  # [0] is self
        kind = str(argument.type)
        optional = bool(argument.has_default_value())
        if kind not in ("Tensor", "Optional[Tensor]") or argument.kwarg_only:
            if optional:
                break
            raise UnsupportedFormat(
                f"forward's argument {argument.name!r} is {kind}; modelport passes tensors only"
            )
        names.append(str(argument.name))
        required = required if optional else len(names)
    return names, required


def _bind(names: Sequence[str], arguments: Sequence[str], required: int) -> list[str]:
    """``names`` in the order ``forward`` takes them: by name when they are its argument
    names, by position (in the order given) when they are none of them."""
    given = list(names)
    if set(given) == set(arguments[: len(given)]) and len(given) >= required:
        return list(arguments[: len(given)])
    if not set(given) & set(arguments) and required <= len(given) <= len(arguments):
        return given
    expected = ", ".join(repr(name) for name in arguments[: max(required, 1)])
    received = ", ".join(repr(name) for name in given) or "none"
    raise InvalidInput(
        f"the model's forward takes {expected}, but the inputs given are {received}; "
        "name the arrays of the .npz after forward's arguments"
    )


def example_signature(
    torch: Any, module: Any, example: Tensors, arguments: list[str], required: int
) -> tuple[Signature, str]:
    """Run ``module`` once on ``example``; describe what went in and came out, and the
    result's container (``tensor``, ``tuple``, ``list``, ``dict``).

    Inputs keep the example's names, in ``forward``'s order; outputs are named ``output``,
    ``output_0..n`` or a flat dict's keys; the first dimension of each is the batch (-1).

    Raises:
        InvalidInput: example arrays that do not fit ``forward`` or that it refuses.
        UnsupportedFormat: results that are not tensors, or of a dtype not served.
    """
    for name, array in example.items():
        if DataType.from_numpy(array.dtype) not in _SERVED:
            supported = ", ".join(sorted(datatype.value for datatype in _SERVED))
            raise InvalidInput(f"example input {name!r} is {array.dtype}; use {supported}")
    order = _bind(list(example), arguments, required)
    tensors = [torch.from_numpy(example[name].copy()) for name in order]
    try:
        with torch.inference_mode():
            result = module(*tensors)
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        message = f"the model could not run on the example: {short_message(exc)}"
        raise InvalidInput(message) from exc
    leaves = list(flatten_outputs(result))
    for index, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise UnsupportedFormat(
                f"output {index} of the model is a {type(leaf).__name__}; modelport serves "
                "tensors (alone, or in tuples, lists and dicts)"
            )
    flat_dict = isinstance(result, dict) and len(leaves) == len(result)
    kind = "tensor" if isinstance(result, torch.Tensor) else "dict" if flat_dict else "sequence"
    names = _output_names(kind, list(result) if flat_dict else [], len(leaves))
    signature = Signature(
        tuple(_spec(n, t, "input", batch=True) for n, t in zip(order, tensors, strict=True)),
        tuple(_spec(n, t, "output", batch=True) for n, t in zip(names, leaves, strict=True)),
    )
    return signature, "tensor" if kind == "tensor" else type(result).__name__


def declared_script_signature(
    declared: Signature, arguments: list[str], required: int
) -> Signature:
    """A ``--signature`` for a TorchScript model, its inputs put in ``forward``'s order."""
    for spec in (*declared.inputs, *declared.outputs):
        if spec.datatype not in _SERVED:
            raise InvalidInput(
                f"--signature: {spec.name!r} is {spec.datatype.value}, which PyTorch models "
                "are not served with"
            )
    order = _bind([spec.name for spec in declared.inputs], arguments, required)
    by_name = {spec.name: spec for spec in declared.inputs}
    return Signature(tuple(by_name[name] for name in order), declared.outputs)


def declared_export_signature(declared: Signature, actual: Signature) -> Signature:
    """A ``--signature`` for an exported program: its own names and dtypes, any shapes."""
    for kind, mine, theirs in (
        ("input", declared.inputs, actual.inputs),
        ("output", declared.outputs, actual.outputs),
    ):
        own = {spec.name: spec.datatype for spec in theirs}
        if {spec.name: spec.datatype for spec in mine} != own:
            listed = ", ".join(f"{name!r} ({datatype.value})" for name, datatype in own.items())
            raise InvalidInput(f"--signature must list the program's own {kind}s: {listed}")
    return declared


def flatten_outputs(value: Any) -> Iterator[Any]:
    """The leaves of a model's result in ``torch.utils._pytree`` order (dicts by insertion)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from flatten_outputs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from flatten_outputs(item)
    else:
        yield value
