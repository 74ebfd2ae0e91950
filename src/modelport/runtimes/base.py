"""The runtime plugin point: the protocol a format implements, and what it takes and gives.

The table of runtimes is in ``runtimes.table``; the one wrapper around what ``load`` returns
is ``runtimes.checked.CheckedModel``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from modelport.errors import InvalidInput, InvalidModel
from modelport.types import Signature, Tensors

__all__ = [
    "LoadOptions",
    "LoadedModel",
    "ModelFiles",
    "Predictor",
    "PushOptions",
    "Runtime",
    "declared_signature",
    "directory_files",
    "last_error_line",
]


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """The files that make up one model: ``root`` and paths relative to it.

    ``entry`` is the file (or ``"."`` for the directory itself) the runtime opens.
    ``sources`` says where to read a path from when it is not ``root / path`` (files named
    on the command line from different directories, stored side by side).
    """

    root: Path
    entry: str
    paths: tuple[str, ...]
    sources: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a runtime learns from inspecting a model without loading it for inference.

    ``metadata`` is stored with the version and handed back to ``load`` (as
    ``LoadOptions.metadata``): whatever the runtime needs to load the files again (a task
    name, a framework version, class labels).
    """

    files: ModelFiles
    signature: Signature
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PushOptions:
    """What the user said at push time beyond the model's path."""

    example: Tensors | None = None
    """An example input, for formats that do not record their signature (``--example``)."""
    signature: Signature | None = None
    """An explicit signature (``--signature sig.json``); wins over what the model records."""
    trust_pickle: bool = False
    """The user accepts formats that run code when loaded (``--trust-pickle``)."""
    task: str | None = None
    """What the model does, for formats that serve several tasks (``--task``)."""
    companions: tuple[Path, ...] = ()
    """Further files named on the command line (e.g. Caffe weights after the prototxt)."""


def declared_signature(options: PushOptions, format_name: str) -> Signature:
    """The signature the user gave, for formats that cannot tell their own.

    Raises:
        InvalidInput: neither ``--signature`` nor ``--example`` was given.
    """
    if options.signature is not None:
        return options.signature
    raise InvalidInput(
        f"a {format_name} model does not record its inputs and outputs; give an example input "
        "with --example x.npz, or the signature with --signature sig.json"
    )


_ERROR_LINE = re.compile(r"^\s*[\w.]*(?:Error|Exception): (.+)$")


def last_error_line(exc: BaseException) -> str:
    """One line from a framework error that carries a traceback (TorchScript, TensorFlow):
    its last ``...Error: message`` line, else its first line; at most 300 characters."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            text = match.group(1)
            break
    text = text.strip()
    return text if len(text) <= 300 else text[:297] + "..."


def directory_files(root: Path) -> tuple[str, ...]:
    """Every regular file under ``root``, relative (POSIX) and sorted: what a model stored as
    a directory is made of. Symlinked directories are not descended (their targets, being
    inside, are listed anyway).

    Raises:
        InvalidModel: a symlink that points outside ``root``.
    """
    real_root = root.resolve()
    found: list[str] = []
    for directory, subdirectories, filenames in os.walk(root):
        for name in (*subdirectories, *filenames):
            child = Path(directory, name)
            if child.is_symlink() and not child.resolve().is_relative_to(real_root):
                relative = child.relative_to(root).as_posix()
                raise InvalidModel(f"{relative} is a symlink pointing outside the model directory")
            if name in filenames and child.is_file():
                found.append(child.relative_to(root).as_posix())
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How to load a model for inference. Runtimes ignore options that do not apply."""

    intra_op_threads: int = 0
    """Threads inside one operator; 0 lets the runtime choose."""
    inter_op_threads: int = 0
    """Threads across independent operators; 0 lets the runtime choose."""
    solo_threads: int = 0
    """Threads for a call that runs while no other call of this model is running; 0: the
    same as every call. A runtime that can honour it without a second copy of the weights
    (``onnx``, weights shared through ``derived_dir``) keeps a second session for such calls;
    others ignore it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Format-specific options, passed through untouched."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What ``inspect`` recorded about the model at push time."""
    trust_pickle: bool = False
    """The version was pushed with ``--trust-pickle``."""
    derived_dir: Path | None = None
    """A directory where the runtime may keep derived, machine-specific files for this
    version (e.g. an optimized graph); ``None``: nothing derived is kept. Runtimes that derive
    nothing ignore it."""
    verify_derived: bool = False
    """Re-hash derived files found in ``derived_dir`` against the digests recorded when they
    were built, and build them again if they differ (see ``runtimes.derived``). The
    registry asks for it whenever its verify policy re-hashes the version's own files."""


@runtime_checkable
class Predictor(Protocol):
    """One framework's model, run as is: what a runtime's ``load`` returns.

    ``run`` is called only with inputs that match ``signature`` and with ``outputs`` a
    non-empty list of the signature's output names, each once; it returns at least those.
    It may be called from many threads at once (a predictor whose framework is not
    thread-safe takes its own lock). ``close`` is called once.
    """

    @property
    def signature(self) -> Signature:
        """The inputs the model takes and the outputs it gives."""
        ...

    @property
    def input_errors(self) -> tuple[type[Exception], ...]:
        """Framework exceptions that mean "these inputs cannot run" (``InvalidInput``);
        any other exception from ``run`` is a failure of the model (``Internal``)."""
        ...

    def describe_error(self, error: Exception) -> str:
        """One short line of ``error``'s message, without native prefixes or tracebacks."""
        ...

    def run(self, inputs: Tensors, outputs: Sequence[str]) -> Mapping[str, Any]:
        """The named ``outputs`` for ``inputs``, as numpy arrays (or array-likes)."""
        ...

    def close(self) -> None:
        """Drop the framework's model; calls already running may finish."""
        ...


@runtime_checkable
class LoadedModel(Protocol):
    """A model ready for inference.

    ``predict`` validates its inputs against ``signature`` first, may be called from many
    threads at once (the server's instances), and releases the GIL while the framework
    computes. A loaded model is a context manager: leaving the ``with`` block closes it.
    Every runtime's model is a ``CheckedModel`` around the runtime's ``Predictor`` (see
    ``runtimes.checked``).
    """

    @property
    def signature(self) -> Signature: ...

    def predict(self, inputs: Tensors, outputs: list[str] | None = None) -> Tensors: ...

    def close(self) -> None: ...

    def __enter__(self) -> LoadedModel: ...

    def __exit__(self, *_exc: object) -> None: ...


class Runtime(Protocol):
    """A model format: how to recognise it, inspect it, and load it."""

    format: str
    """Stable format name stored with each version, e.g. ``"onnx"``."""
    extra: str
    """The pip extra that brings its framework (``""`` when part of the core install)."""

    def detect(self, path: Path) -> bool:
        """Whether ``path`` (file or directory) looks like this format. Cheap; never loads."""
        ...

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Validate the model at ``path`` and describe its files and signature.

        Raises:
            InvalidModel: the model is corrupt, truncated or unsafe.
            UnsupportedFormat: it uses something this runtime cannot serve.
        """
        ...

    def load(self, path: Path, options: LoadOptions) -> Predictor:
        """Load the model whose entry file or directory is ``path``, as a ``Predictor``;
        ``RuntimeTable.load`` wraps it in the one ``CheckedModel``."""
        ...
