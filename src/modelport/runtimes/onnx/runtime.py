"""The ``onnx`` runtime: ONNX models served with onnxruntime on CPU.

File checks and signatures live in ``onnx.inspect``; this module adds the session.
Sessions whose weights are shared between processes (given a ``derived_dir``) are built by
``onnx.shared_weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelport.errors import InvalidInput, InvalidModel, MissingDependency
from modelport.runtimes.base import LoadOptions, ModelInfo, PushOptions
from modelport.runtimes.onnx.inspect import (
    entry_file,
    external_data_files,
    inspect_model,
    onnx_files,
    read_model,
    short_message,
    signature,
)
from modelport.runtimes.onnx.model import OnnxModel
from modelport.runtimes.onnx.shared_weights import open_shared, shared_session
from modelport.types import Signature

__all__ = ["OnnxRuntime"]

_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


class OnnxRuntime:
    """The ``onnx`` format: a ``.onnx`` file, or a directory with exactly one at its top.

    External data files must sit inside the model's directory; anything else is refused as
    unsafe before any loader touches it.
    """

    format = "onnx"
    extra = ""

    def detect(self, path: Path) -> bool:
        """Whether ``path`` is a ``.onnx`` file or a directory with exactly one. Never parses."""
        try:
            if path.is_file():
                return path.suffix.lower() == ".onnx"
            return path.is_dir() and len(onnx_files(path)) == 1
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Validate the model at ``path`` and describe it; see ``inspect_model``.

        An explicit ``--signature`` must name the model's own inputs and outputs; it may
        narrow dynamic dimensions.

        Raises:
            InvalidModel: the model is missing, corrupt, truncated or unsafe.
            UnsupportedFormat: an input or output of a type modelport cannot serve.
        """
        info = inspect_model(path)
        if options.signature is None:
            return info
        _check_declared(options.signature, info.signature)
        return ModelInfo(info.files, options.signature, info.metadata)

    def load(self, path: Path, options: LoadOptions) -> OnnxModel:
        """Load the model whose entry file (or directory holding one) is ``path``, on CPU.

        ``options.extra`` may hold ``graph_optimization_level`` (disable, basic, extended,
        all) and ``execution_mode`` (sequential, parallel); other keys are ignored.

        With ``options.derived_dir``, the graph is optimized once and saved there with its
        weights in a file onnxruntime maps, so that processes loading the same model share
        one copy of the weights (see ``onnx.shared_weights``; not with optimization ``disable``).
        With ``options.solo_threads`` above ``intra_op_threads`` and the weights shared this
        way, a second session with that many threads maps the same weights and runs the calls
        that find no other call running (see ``OnnxModel``).
        With ``options.verify_derived``, a copy found there is re-hashed first, and built
        again if it changed. The cache never makes a load fail: when it cannot be used, a
        warning is logged and the model is loaded as without it.

        Raises:
            MissingDependency: onnxruntime is not installed.
            InvalidInput: an option has a value onnxruntime does not know.
            InvalidModel: as for ``inspect``, or onnxruntime refuses the model.
            UnsupportedFormat: as for ``inspect``.
        """
        ort = _import_onnxruntime()
        entry = entry_file(path)
        model = read_model(entry)
        external_data_files(model, entry)
        described = signature(model)
        del model  # its weights may be large; the session does not need this copy
        session_options = _session_options(ort, options)
        level = _optimization_level(options)
        if options.derived_dir is None or level == "ORT_DISABLE_ALL":
            return OnnxModel(
                _open_session(ort, entry, session_options), described, _onnxruntime_errors(ort)
            )
        session = shared_session(
            ort,
            entry,
            options.derived_dir,
            level,
            make_options=lambda: _session_options(ort, options),
            open_original=lambda: _open_session(ort, entry, session_options),
            verify=options.verify_derived,
        )
        solo = None
        if options.solo_threads > options.intra_op_threads > 0:
            solo = open_shared(
                ort,
                entry,
                options.derived_dir,
                level,
                lambda: _session_options(ort, options, threads=options.solo_threads),
            )
        return OnnxModel(session, described, _onnxruntime_errors(ort), solo_session=solo)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependency(
            "serving ONNX models needs onnxruntime, which is missing; pip install modelport"
        ) from exc
    return onnxruntime


def _open_session(ort: Any, entry: Path, session_options: Any) -> Any:
    try:
        return ort.InferenceSession(
            str(entry), sess_options=session_options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's errors share no narrower base
        message = f"onnxruntime could not load {entry.name}: {short_message(exc)}"
        raise InvalidModel(message) from exc


def _onnxruntime_errors(ort: Any) -> tuple[type[Exception], ...]:
    """The onnxruntime errors that mean the request's values were refused.

    INVALID_ARGUMENT is onnxruntime refusing the values (an index out of range, say): the
    request's fault, so ``CheckedModel`` answers ``InvalidInput``. Anything else (FAIL,
    RUNTIME_EXCEPTION, ...) on inputs the signature accepted is the model failing: the same
    request fails the same way, so it is ``Internal``, never a retry-me ``Unavailable``.
    """
    return (ort.capi.onnxruntime_pybind11_state.InvalidArgument,)


def _session_options(ort: Any, options: LoadOptions, *, threads: int | None = None) -> Any:
    """onnxruntime's options for ``options``; ``threads`` replaces ``intra_op_threads``."""
    intra = options.intra_op_threads if threads is None else threads
    for field, value in (
        ("intra_op_threads", intra),
        ("inter_op_threads", options.inter_op_threads),
        ("solo_threads", options.solo_threads),
    ):
        if value < 0:
            raise InvalidInput(f"{field} must be 0 (the runtime chooses) or more, not {value}")
    session_options = ort.SessionOptions()
    # onnxruntime logs straight to stderr; its failures already reach callers as our errors,
    # and a bad request must not print an error line per call.
    session_options.log_severity_level = 4
    if intra > 0:
        session_options.intra_op_num_threads = intra
    if options.inter_op_threads > 0:
        session_options.inter_op_num_threads = options.inter_op_threads
    level = _choice(options.extra, "graph_optimization_level", _OPTIMIZATION_LEVELS)
    if level is not None:
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    mode = _choice(options.extra, "execution_mode", _EXECUTION_MODES)
    if mode is not None:
        session_options.execution_mode = getattr(ort.ExecutionMode, mode)
    return session_options


def _optimization_level(options: LoadOptions) -> str:
    chosen = _choice(options.extra, "graph_optimization_level", _OPTIMIZATION_LEVELS)
    return chosen or "ORT_ENABLE_ALL"  # onnxruntime's own default


def _choice(extra: dict[str, Any], key: str, choices: dict[str, str]) -> str | None:
    if key not in extra:
        return None
    value = extra[key]
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise InvalidInput(f"{key} {value!r} is not one of {valid}")
    return choices[value]


def _check_declared(declared: Signature, actual: Signature) -> None:
    for kind, mine, theirs in (
        ("input", declared.inputs, actual.inputs),
        ("output", declared.outputs, actual.outputs),
    ):
        if sorted(s.name for s in mine) != sorted(s.name for s in theirs):
            names = ", ".join(repr(s.name) for s in theirs)
            raise InvalidInput(f"--signature must list the model's own {kind}s: {names}")
