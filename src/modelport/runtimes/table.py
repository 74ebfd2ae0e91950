"""The runtime table: format names to runtime classes, declared, immutable, imported lazily.

Built-in runtimes are the ``BUILTIN`` entries below, in detection order. Other packages add
formats through the entry-point group ``modelport.runtimes`` (name: the format name, value:
``"package.module:RuntimeClass"``)::

    [project.entry-points."modelport.runtimes"]
    echo = "modelport_echo:EchoRuntime"

A runtime class is imported the first time its format is needed, and built with no
arguments. Two entries claiming one format name are an error when the table is built, never
a silent overwrite.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from threading import Lock
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

from modelport.errors import Conflict, InvalidModel, MissingDependency, UnsupportedFormat

if TYPE_CHECKING:
    from modelport.runtimes.base import LoadOptions, Runtime
    from modelport.runtimes.checked import CheckedModel

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "RuntimeTable", "default_runtimes"]

ENTRY_POINT_GROUP = "modelport.runtimes"

BUILTIN: tuple[tuple[str, str], ...] = (
    # MLflow directories wrap the other formats, so they are detected first.
    ("mlflow", "modelport.runtimes.mlflow.runtime:MLflowRuntime"),
    # A converted Hugging Face directory holds one .onnx file and a config.json with a
    # tokenizer, which the onnx and huggingface runtimes would claim.
    ("huggingface_onnx", "modelport.runtimes.huggingface.onnx_runtime:HuggingFaceOnnxRuntime"),
    ("onnx", "modelport.runtimes.onnx.runtime:OnnxRuntime"),
    ("skops", "modelport.runtimes.sklearn.runtime:SkopsRuntime"),
    ("sklearn_pickle", "modelport.runtimes.sklearn.runtime:PickleRuntime"),
    ("xgboost", "modelport.runtimes.boosting.runtime:XGBoostRuntime"),
    ("lightgbm", "modelport.runtimes.boosting.runtime:LightGBMRuntime"),
    ("torchscript", "modelport.runtimes.torch.runtime:TorchScriptRuntime"),
    ("torch_export", "modelport.runtimes.torch.runtime:TorchExportRuntime"),
    ("keras", "modelport.runtimes.tensorflow.runtime:KerasRuntime"),
    ("tf_savedmodel", "modelport.runtimes.tensorflow.runtime:SavedModelRuntime"),
    ("caffe", "modelport.runtimes.caffe.runtime:CaffeRuntime"),
    ("huggingface", "modelport.runtimes.huggingface.runtime:HuggingFaceRuntime"),
)
"""The built-in formats as ``(format name, "module:Class")``, in detection order."""


class RuntimeTable:
    """Runtimes by format name, fixed when built.

    ``entries`` are ``(format name, "module:Class")`` pairs; ``detect`` asks the runtimes
    in their order, so a format that wraps others (an MLflow directory holding an ONNX
    file) comes before the formats it wraps. The table holds one instance per format,
    built on first use; it is safe to share between threads.

    Raises:
        Conflict: two entries claim one format name.
    """

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        targets: dict[str, str] = {}
        for name, target in entries:
            if name in targets:
                raise Conflict(
                    f"two runtimes claim format {name!r}: {targets[name]} and {target}; "
                    "uninstall one of the packages that provide them"
                )
            targets[name] = target
        self._targets: Mapping[str, str] = MappingProxyType(targets)
        self._instances: dict[str, Runtime] = {}
        self._lock = Lock()

    @property
    def entries(self) -> Mapping[str, str]:
        """Format name -> ``"module:Class"``, read-only, in detection order."""
        return self._targets

    def formats(self) -> list[str]:
        """The format names, sorted."""
        return sorted(self._targets)

    def get(self, format_name: str) -> Runtime:
        """The runtime for ``format_name``, imported and built on first use.

        Raises:
            UnsupportedFormat: no runtime for the name; the message lists the known ones.
            MissingDependency: the runtime's module cannot be imported.
        """
        runtime = self._instances.get(format_name)
        if runtime is not None:
            return runtime
        target = self._targets.get(format_name)
        if target is None:
            raise UnsupportedFormat(
                f"unknown format {format_name!r}; supported formats: {', '.join(self.formats())}"
            )
        with self._lock:
            runtime = self._instances.get(format_name)
            if runtime is None:
                runtime = self._instances[format_name] = _build(format_name, target)
        return runtime

    def load(self, format_name: str, path: Path, options: LoadOptions) -> CheckedModel:
        """Load ``path`` with the runtime for ``format_name``, wrapped in a ``CheckedModel``.

        Raises:
            UnsupportedFormat: no runtime for ``format_name``; else as the runtime's ``load``.
        """
        from modelport.runtimes.checked import CheckedModel

        return CheckedModel(self.get(format_name).load(path, options))

    def __iter__(self) -> Iterator[Runtime]:
        return (self.get(name) for name in self.formats())

    def detect(self, path: Path) -> Runtime:
        """The runtime that recognises ``path``.

        Raises:
            InvalidModel: the path is missing, an empty file, or an empty directory.
            UnsupportedFormat: no runtime recognises it; the message lists the formats.
        """
        if not path.exists():
            raise InvalidModel(f"{path} does not exist")
        if path.is_file() and path.stat().st_size == 0:
            raise InvalidModel(f"{path} is an empty file")
        if path.is_dir() and not any(path.iterdir()):
            raise InvalidModel(f"{path} is an empty directory")
        for name in self._targets:
            runtime = self.get(name)
            if runtime.detect(path):
                return runtime
        what = "directory with no model in it" if path.is_dir() else "file of no known format"
        raise UnsupportedFormat(f"{path}: {what}; supported formats: {', '.join(self.formats())}")


def _build(format_name: str, target: str) -> Runtime:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        runtime_class = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise MissingDependency(
            f"the runtime for format {format_name!r} ({target}) cannot be imported: {exc}"
        ) from exc
    runtime = cast("Runtime", runtime_class())
    if getattr(runtime, "format", None) != format_name:
        raise Conflict(
            f"{target} is registered for format {format_name!r} but says its format is "
            f"{getattr(runtime, 'format', None)!r}"
        )
    return runtime


def installed_entries() -> list[tuple[str, str]]:
    """The ``modelport.runtimes`` entry points of installed packages, as table entries."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return [(entry.name, entry.value) for entry in sorted(found, key=lambda e: e.name)]


@cache
def default_runtimes() -> RuntimeTable:
    """The built-in runtimes, then those installed packages add (``modelport.runtimes``
    entry points), in one read-only table built once per process.

    Raises:
        Conflict: an installed package claims a format another runtime already serves.
    """
    return RuntimeTable((*BUILTIN, *installed_entries()))
