"""The ``caffe`` runtime: Caffe networks (``deploy.prototxt`` + ``weights.caffemodel``) served
by OpenCV's dnn module (``cv2.dnn.readNetFromCaffe``) on CPU.

A version holds both files; the prototxt is the entry and ``metadata["weights"]`` names the
weights, relative to the version's root. The signature comes from the prototxt's inputs (see
``caffe.prototxt``), or ``--example``/``--signature`` when it gives no shapes; it is checked by
running the net once at push, and the first dimension is made dynamic (-1) when the net also
runs another batch size and its outputs follow it.

OpenCV reports from C++ straight to the process's stderr. ``inspect`` (push) catches that
output so the user sees one line; ``load`` reads files that ``inspect`` accepted, and OpenCV's
own log lines about a request it could not run go to the server's stderr.

Concurrency: a ``cv2.dnn.Net`` keeps its inputs and buffers in itself and is not thread-safe;
the serving layer runs one loaded model on several instances (threads), so ``CaffeModel`` keeps a
pool of Nets, one per forward pass running (see ``CaffeModel``). OpenCV releases the GIL
while it computes. ``cv2.setNumThreads`` is process-wide: see ``set_threads``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from modelport.errors import InvalidInput, InvalidModel, MissingDependency
from modelport.runtimes.base import (
    LoadOptions,
    ModelFiles,
    ModelInfo,
    PushOptions,
)
from modelport.runtimes.caffe.model import CaffeModel
from modelport.runtimes.caffe.prototxt import network_inputs, read_network
from modelport.runtimes.caffe.signature import (
    captured_stderr,
    describe,
    open_net,
)
from modelport.runtimes.threads import ProcessThreads
from modelport.types import Signature

__all__ = ["CaffeRuntime"]

log = logging.getLogger(__name__)

_SUFFIXES = frozenset({".prototxt", ".caffemodel"})
_MISSING = (
    "serving Caffe models needs OpenCV's dnn module, which is missing: "
    "pip install 'modelport[caffe]'"
)


class CaffeRuntime:
    """The ``caffe`` format: ``modelport push deploy.prototxt weights.caffemodel``.

    The two files may sit in different directories; they are stored side by side, under
    their own names.
    """

    format = "caffe"
    extra = "caffe"

    def detect(self, path: Path) -> bool:
        """A ``.prototxt`` file (any: a broken one is for ``inspect`` to refuse), or a
        ``.caffemodel`` named first, so that ``inspect`` can say which file goes first."""
        try:
            return path.is_file() and path.suffix.lower() in _SUFFIXES
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Read the prototxt, load both files in OpenCV, run the net once, describe it.

        Raises:
            InvalidInput: no weights file named, more than one, the files swapped, or an
                ``--example``/``--signature`` that does not fit the net.
            InvalidModel: a damaged prototxt or weights file, or weights that do not fit.
            UnsupportedFormat: a layer type OpenCV does not implement.
            MissingDependency: OpenCV is not installed.
        """
        weights = _weights_path(path, options.companions)
        inputs = network_inputs(read_network(path), path.name)
        cv2 = _import_cv2()
        with captured_stderr() as stderr:
            net = open_net(cv2, path, weights, stderr)
            signature = describe(
                cv2, net, inputs, options, prototxt=path, weights=weights, stderr=stderr
            )
        files = _model_files(path, weights)
        metadata = {
            "prototxt": files.entry,
            "weights": files.paths[1],
            "opencv_version": str(cv2.__version__),
            "signature": signature.to_dict(),
        }
        return ModelInfo(files, signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> CaffeModel:
        """``cv2.dnn.readNetFromCaffe`` on the stored prototxt and weights.

        Raises:
            InvalidModel: the version's metadata lacks the weights or signature, or OpenCV
                refuses the files.
            InvalidInput: a negative ``intra_op_threads``.
            MissingDependency: OpenCV is not installed.
        """
        recorded, weights = options.metadata.get("signature"), options.metadata.get("weights")
        if not isinstance(recorded, dict) or not isinstance(weights, str):
            raise InvalidModel(
                f"{path.name}: this version records no Caffe weights file or signature; push "
                "it again with: modelport push deploy.prototxt weights.caffemodel"
            )
        cv2 = _import_cv2()
        set_threads(cv2, options)
        weights_path = _root_of(path, weights) / weights
        return CaffeModel(
            lambda: open_net(cv2, path, weights_path, None),
            Signature.from_dict(recorded),
            (cv2.error,),
        )


_OPENCV_THREADS = ProcessThreads("OpenCV")


def set_threads(cv2: Any, options: LoadOptions) -> None:
    """Apply ``intra_op_threads`` with ``cv2.setNumThreads``, which is process-wide (see
    ``ProcessThreads``). ``inter_op_threads`` does not apply to OpenCV.

    Raises:
        InvalidInput: a negative count.
    """
    _OPENCV_THREADS.apply(options.intra_op_threads, cv2.setNumThreads)


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependency(_MISSING) from exc
    if not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
        raise MissingDependency(
            f"OpenCV {cv2.__version__} has no Caffe importer (OpenCV 5 removed it): "
            "pip install 'modelport[caffe]' installs an OpenCV 4 that has it"
        )
    return cv2


def _weights_path(prototxt: Path, companions: tuple[Path, ...]) -> Path:
    usage = "modelport push deploy.prototxt weights.caffemodel --name NAME"
    if prototxt.suffix.lower() == ".caffemodel":
        raise InvalidInput(
            f"{prototxt.name} holds Caffe weights; name the network definition (prototxt) "
            f"first and the weights after it: {usage}"
        )
    if not companions:
        raise InvalidInput(
            f"{prototxt.name} defines a Caffe network but holds no weights; pass the weights "
            f"file (weights.caffemodel) after the prototxt: {usage}"
        )
    if len(companions) > 1:
        raise InvalidInput(
            f"a Caffe model is two files, the prototxt and the weights; {len(companions) + 1} "
            f"were given: {usage}"
        )
    weights = companions[0]
    if not weights.exists():
        raise InvalidModel(f"{weights} does not exist")
    if not weights.is_file():
        raise InvalidModel(f"{weights} is not a file; the weights are one .caffemodel file")
    if weights.stat().st_size == 0:
        raise InvalidModel(f"{weights} is an empty file")
    if _absolute(weights) == _absolute(prototxt):
        raise InvalidInput(f"{prototxt.name} was given twice: {usage}")
    return weights


def _absolute(path: Path) -> Path:
    # normpath, not resolve: a symlink is stored under the name the user gave it.
    return Path(os.path.normpath(path.absolute()))


def _model_files(prototxt: Path, weights: Path) -> ModelFiles:
    entry = prototxt.name
    stored = weights.name if weights.name != entry else f"weights-{weights.name}"
    return ModelFiles(prototxt.parent, entry, (entry, stored), sources={stored: weights})


def _root_of(entry: Path, weights: str) -> Path:
    """The version's root, where the weights sit beside the prototxt."""
    if PurePosixPath(weights).name != weights:
        raise InvalidModel(f"{entry.name}: the recorded weights path {weights!r} is not safe")
    return entry.parent
