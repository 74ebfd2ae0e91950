"""Opening a Caffe net in OpenCV and finding its signature by running it.

OpenCV's errors are C++ exceptions (``cv2.error``) with a source path, a code and sometimes
several lines; its dnn module also logs to stderr, and the protobuf parser inside it prints
the reason a prototxt does not parse there rather than in the exception. Everything here
turns that into one-line ``InvalidModel``/``InvalidInput``/``UnsupportedFormat`` messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from modelport.errors import InvalidInput, InvalidModel, UnsupportedFormat
from modelport.runtimes.base import PushOptions
from modelport.runtimes.caffe.prototxt import NetworkInput
from modelport.types import DataType, Signature, TensorSpec

__all__ = ["captured_stderr", "describe", "open_net", "short_message"]

log = logging.getLogger(__name__)

Stderr = Callable[[], str]
Shapes = dict[str, tuple[int, ...]]

_PREFIX = re.compile(r"^OpenCV\([^)]*\) \S+: error: \([^)]*\) ")
_IN_FUNCTION = re.compile(r" in function '[^']*'$")
_PROTOBUF = re.compile(r"Error parsing text-format \S+: (?:(\d+):(\d+): )?(.*)")
# Layers that cannot run without blobs from the weights file.
_NEEDS_WEIGHTS = frozenset(
    {"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "PReLU", "Embed"}
)
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def captured_stderr() -> Iterator[Stderr]:
    """Send file descriptor 2 to a temporary file for the block; yield a reader of it.

    The redirect is process-wide (OpenCV writes from C++, below ``sys.stderr``), so what
    other threads print meanwhile is caught too: it is all logged at DEBUG when the block
    ends. With no usable descriptor 2, nothing is redirected and the reader returns "".
    """
    with _stderr_lock, tempfile.TemporaryFile() as sink:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            saved = -1
        if saved < 0:
            yield lambda: ""
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: _read(sink)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught = _read(sink)
            if caught:
                log.debug("OpenCV wrote while loading a Caffe model:\n%s", caught)


def _read(sink: IO[bytes]) -> str:
    sink.flush()
    sink.seek(0)
    return sink.read().decode(errors="replace")


def short_message(exc: BaseException) -> str:
    """One line from an OpenCV error: no source path or code, no ``in function`` tail."""
    text = _PREFIX.sub("", str(exc).strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = _IN_FUNCTION.sub("", lines[0]) if lines else type(exc).__name__
    if (not first or first.startswith("in function")) and len(lines) > 1:
        first = " ".join(line.lstrip("> ").strip() for line in lines[1:])
    return first if len(first) <= 300 else first[:297] + "..."


def open_net(cv2: Any, prototxt: Path, weights: Path, stderr: Stderr | None) -> Any:
    """``cv2.dnn.readNetFromCaffe(prototxt, weights)``; ``stderr`` reads what OpenCV printed.

    Raises:
        InvalidModel: either file does not parse.
    """
    try:
        return cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    except cv2.error as exc:
        text = str(exc)
        if "FromTextFile" in text:
            detail = _protobuf_detail(stderr() if stderr else "") or short_message(exc)
            message = f"{prototxt.name} is not a Caffe network definition OpenCV can read: {detail}"
        elif "Can't create layer" in text:
            raise _unsupported(exc, prototxt) from exc
        elif "FromBinaryFile" in text:
            message = (
                f"{weights.name} is not a Caffe weights file (a binary caffe.NetParameter), "
                "or it is truncated"
            )
        else:
            message = f"OpenCV could not load {prototxt.name} with {weights.name}: "
            message += short_message(exc)
        raise InvalidModel(message) from exc


def _unsupported(exc: Exception, prototxt: Path) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"{prototxt.name} uses a layer OpenCV's dnn module cannot run: {short_message(exc)}"
    )


def _protobuf_detail(printed: str) -> str:
    match = _PROTOBUF.search(printed)
    if match is None:
        return ""
    line, column, what = match.groups()
    return f"line {line}, column {column}: {what.strip()}" if line else what.strip()


def describe(
    cv2: Any,
    net: Any,
    inputs: list[NetworkInput],
    options: PushOptions,
    *,
    prototxt: Path,
    weights: Path,
    stderr: Stderr,
) -> Signature:
    """The net's signature: inputs from the prototxt (or ``--example``/``--signature``),
    outputs the net's unconnected layers, all FP32, checked by running the net on zeros.

    Raises:
        InvalidInput: no shape for an input and no ``--example``/``--signature``, or ones
            that do not fit the net.
        InvalidModel: weights that do not fit the prototxt.
        UnsupportedFormat: a layer type OpenCV does not implement.
    """
    known = {item.name: item.shape for item in inputs}
    declared = options.signature
    given = "--signature" if declared is not None else "--example"
    if declared is not None:
        outputs = _declared_outputs(declared, known, net)
        trial = {spec.name: _trial_shape(spec, known) for spec in declared.inputs}
    elif options.example is not None:
        outputs = list(net.getUnconnectedOutLayersNames())
        trial = _example_shapes(options.example, known)
    else:
        outputs, given = list(net.getUnconnectedOutLayersNames()), ""
        trial = {}
        for name, shape in known.items():
            if shape is None:
                raise InvalidInput(
                    f"{prototxt.name} gives no shape for input {name!r}; give an example input "
                    "with --example x.npz, or the signature with --signature sig.json"
                )
            trial[name] = shape
    try:
        first = _run(net, trial, outputs)
    except cv2.error as exc:
        raise _run_failure(exc, net, (prototxt, weights), given, trial) from exc
    batched = _runs_any_batch(cv2, net, trial, outputs, first)
    if declared is not None:
        _check_declared_outputs(declared, first, batched)
        return declared

    def dims(shape: tuple[int, ...]) -> tuple[int, ...]:
        return (-1, *shape[1:]) if batched else shape

    fp32 = DataType.FP32
    return Signature(
        inputs=tuple(TensorSpec(name, fp32, dims(shape)) for name, shape in trial.items()),
        outputs=tuple(TensorSpec(n, fp32, dims(s)) for n, s in zip(outputs, first, strict=True)),
    )


def _run(net: Any, shapes: Shapes, outputs: list[str]) -> list[tuple[int, ...]]:
    for name, shape in shapes.items():
        net.setInput(np.zeros(shape, np.float32), name)
    return [tuple(int(d) for d in result.shape) for result in net.forward(outputs)]


def _runs_any_batch(
    cv2: Any, net: Any, trial: Shapes, outputs: list[str], first: list[tuple[int, ...]]
) -> bool:
    """Whether the net also runs another batch size, its outputs' first dimension following."""
    sizes = {shape[0] if shape else 0 for shape in trial.values()}
    if len(sizes) != 1 or 0 in sizes or any(not shape for shape in first):
        return False
    size = sizes.pop()
    other = 2 if size == 1 else 1
    try:
        second = _run(net, {k: (other, *s[1:]) for k, s in trial.items()}, outputs)
    except cv2.error:
        return False
    return all(
        a[0] == size and b[0] == other and a[1:] == b[1:]
        for a, b in zip(first, second, strict=True)
    )


def _run_failure(
    exc: Exception, net: Any, files: tuple[Path, Path], given: str, trial: Shapes
) -> Exception:
    prototxt, weights = files
    message = short_message(exc)
    if "Can't create layer" in str(exc):
        return _unsupported(exc, prototxt)
    missing = _unweighted_layers(net, type(exc))
    if missing:
        return InvalidModel(
            f"{weights.name} has no weights for layer(s) {', '.join(missing)} of "
            f"{prototxt.name}; are these the weights of this network?"
        )
    if given:
        shapes = ", ".join(f"{name} {list(shape)}" for name, shape in trial.items())
        return InvalidInput(f"the network cannot run on the {given} shapes ({shapes}): {message}")
    return InvalidModel(
        f"OpenCV could not run {prototxt.name} with {weights.name} (do these weights belong "
        f"to this network?): {message}"
    )


def _unweighted_layers(net: Any, error: type[Exception]) -> list[str]:
    missing = []
    for name in net.getLayerNames():
        try:
            layer = net.getLayer(name)
        except error:  # a layer OpenCV cannot even build has a problem of its own
            continue
        if layer.type in _NEEDS_WEIGHTS and not layer.blobs:
            missing.append(name)
    return missing


def _example_shapes(example: dict[str, Any], known: dict[str, Any]) -> Shapes:
    if set(example) != set(known):
        raise InvalidInput(
            f"the example names {_names(example)}; the network's inputs are {_names(known)}"
        )
    for name, array in example.items():
        if np.asarray(array).dtype.kind not in "fiub":
            raise InvalidInput(f"example input {name!r} is not numeric; Caffe nets take FP32")
    return {name: tuple(int(d) for d in np.shape(example[name])) for name in known}


def _declared_outputs(declared: Signature, known: dict[str, Any], net: Any) -> list[str]:
    names = {spec.name for spec in declared.inputs}
    if names != set(known):
        raise InvalidInput(
            f"--signature names inputs {_names(names)}; the network's inputs are {_names(known)}"
        )
    for spec in (*declared.inputs, *declared.outputs):
        if spec.datatype is not DataType.FP32:
            raise InvalidInput(
                f"--signature gives {spec.name!r} as {spec.datatype.value}; Caffe nets in "
                "OpenCV take and give FP32"
            )
    layers = set(net.getLayerNames())
    for spec in declared.outputs:
        if spec.name not in layers:
            raise InvalidInput(
                f"--signature names output {spec.name!r}, which is no layer of the network; "
                f"its final layers are {_names(net.getUnconnectedOutLayersNames())}"
            )
    return declared.output_names()


def _trial_shape(spec: TensorSpec, known: dict[str, tuple[int, ...] | None]) -> tuple[int, ...]:
    """A concrete shape to run: the declared one, with the prototxt's or 1 for each -1."""
    fallback = known.get(spec.name)
    if spec.shape is None:
        if fallback is None:
            raise InvalidInput(f"--signature gives no shape for input {spec.name!r}")
        return fallback
    if fallback is not None and len(fallback) != len(spec.shape):
        fallback = None
    return tuple(d if d > 0 else (fallback[i] if fallback else 1) for i, d in enumerate(spec.shape))


def _check_declared_outputs(
    declared: Signature, shapes: list[tuple[int, ...]], batched: bool
) -> None:
    for spec, shape in zip(declared.outputs, shapes, strict=True):
        if not spec.accepts_shape(shape):
            raise InvalidInput(
                f"--signature gives output {spec.name!r} shape {spec.shape_text()}; the "
                f"network gives {list(shape)}"
            )
    dynamic = [s.name for s in declared.inputs if s.shape and s.shape[0] < 0]
    if dynamic and not batched:
        raise InvalidInput(
            f"--signature makes the first dimension of {_names(dynamic)} dynamic, but the "
            "network runs only the batch size its prototxt gives"
        )


def _names(names: Any) -> str:
    return ", ".join(repr(name) for name in names)
