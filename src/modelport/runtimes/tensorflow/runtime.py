"""The ``keras`` and ``tf_savedmodel`` runtimes: Keras 3 and TensorFlow models on CPU.

Safety: ``.keras`` archives are loaded with ``safe_mode=True``, which refuses to rebuild
Python code stored in the config (a ``Lambda`` layer's bytecode); such a model is taken only
with ``--trust-pickle`` and then loaded with ``safe_mode=False``. Classes Keras does not know
(custom layers) cannot be loaded at all: their code is not in the archive. A SavedModel holds
a graph of TensorFlow operations, no Python; operations that reach files or Python
(``tensorflow.signature.UNSAFE_OPS``) are refused without ``--trust-pickle``.

Detection needs no TensorFlow: any ``.keras`` file is ``keras``'s (a broken one is reported
as broken), and a directory holding ``saved_model.pb`` or ``saved_model.pbtxt`` is
``tf_savedmodel``'s.

Threads: TensorFlow's intra- and inter-op thread pools are process-wide and can be set only
before TensorFlow runs its first operation. The first load asking for counts sets them when
that is still possible; otherwise (a model already loaded or inspected in the process) the
counts are kept and a warning logged. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (errors only)
before TensorFlow is first imported, unless the environment sets it.

Concurrency: ``predict`` calls one traced ``tf.function`` (a concrete function); TensorFlow
runs it with the GIL released, and it may be called from several threads at once.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

from modelport.errors import InvalidModel, MissingDependency, UnsupportedFormat
from modelport.runtimes.base import LoadOptions, ModelFiles, ModelInfo, PushOptions, directory_files
from modelport.runtimes.tensorflow.model import (
    MISSING,
    TensorFlowModel,
    import_tensorflow,
    set_threads,
)
from modelport.runtimes.tensorflow.signature import (
    SERVING_KEY,
    check_keras_archive,
    check_saved_model,
    keras_signature,
    saved_model_signature,
    short_message,
    signature_keys,
    unsafe_ops,
)

__all__ = [
    "KerasRuntime",
    "SavedModelRuntime",
    "import_tensorflow",
    "open_saved_model",
    "read_keras_model",
]

_UNSAFE_KERAS = (
    "{name}: the model holds Python code (e.g. a Lambda layer) that Keras runs only with "
    "safe_mode=False; modelport loads it only with --trust-pickle (add it if you trust the "
    "file's source), or rebuild the model from plain Keras layers, or convert it to ONNX where "
    "you trust it and push the .onnx file"
)


class KerasRuntime:
    """The ``keras`` format: a Keras 3 ``.keras`` archive (``model.save("x.keras")``).

    The signature is the model's own (see ``keras_signature``); the version's metadata keeps
    how inputs and outputs are structured and whether the model needed ``safe_mode=False``.
    """

    format = "keras"
    extra = "tensorflow"

    def detect(self, path: Path) -> bool:
        """Any ``.keras`` file; whether it is a sound archive is for ``inspect`` to say."""
        try:
            return path.is_file() and path.suffix.lower() == ".keras"
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the archive, load it in safe mode and read its signature.

        Raises:
            InvalidModel: broken archive, or Python code in it without ``--trust-pickle``.
            UnsupportedFormat: a subclassed model, or dtypes not served.
            MissingDependency: TensorFlow is not installed.
        """
        tf, model, unsafe = _open_keras(path, options.trust_pickle)
        signature, input_kind, output_kind = keras_signature(model)
        metadata = {
            "keras_version": str(_keras().__version__),
            "tensorflow_version": str(tf.__version__),
            "safe_mode": not unsafe,
            "input_structure": input_kind,
            "output_structure": output_kind,
        }
        return ModelInfo(ModelFiles(path.parent, path.name, (path.name,)), signature, metadata)

    def load(self, path: Path, options: LoadOptions) -> TensorFlowModel:
        """Load the archive (in safe mode unless the version was trusted) and trace it once."""
        set_threads(options)
        tf, model, _ = _open_keras(path, options.trust_pickle)
        signature, input_kind, output_kind = keras_signature(model)
        names = [spec.name for spec in signature.inputs]

        def call(*tensors: Any) -> Any:
            if input_kind == "dict":
                return model(dict(zip(names, tensors, strict=True)), training=False)
            return model(list(tensors) if input_kind == "list" else tensors[0], training=False)

        return TensorFlowModel(tf, call, signature, output_kind, keep=model)


class SavedModelRuntime:
    """The ``tf_savedmodel`` format: a directory ``tf.saved_model.save`` or Keras'
    ``model.export`` wrote; it is served through its ``serving_default`` signature."""

    format = "tf_savedmodel"
    extra = "tensorflow"

    def detect(self, path: Path) -> bool:
        """A directory holding ``saved_model.pb`` or ``saved_model.pbtxt``."""
        try:
            return path.is_dir() and any(
                (path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")
            )
        except OSError:
            return False

    def inspect(self, path: Path, options: PushOptions) -> ModelInfo:
        """Check the directory, load it and read its serving signature.

        Raises:
            InvalidModel: missing or truncated files, or unsafe operations untrusted.
            UnsupportedFormat: no ``serving_default`` signature, or one not served.
            MissingDependency: TensorFlow is not installed.
        """
        tf, _, function = open_saved_model(path, trusted=options.trust_pickle)
        files = ModelFiles(path, ".", directory_files(path))
        metadata = {"tensorflow_version": str(tf.__version__), "signature_key": SERVING_KEY}
        return ModelInfo(files, saved_model_signature(function), metadata)

    def load(self, path: Path, options: LoadOptions) -> TensorFlowModel:
        """Load the directory and serve its ``serving_default`` signature."""
        set_threads(options)
        tf, loaded, function = open_saved_model(path, trusted=options.trust_pickle)
        signature = saved_model_signature(function)
        names = [spec.name for spec in signature.inputs]

        def call(*tensors: Any) -> Any:
            return function(**dict(zip(names, tensors, strict=True)))

        return TensorFlowModel(tf, call, signature, "dict", keep=loaded)


def read_keras_model(path: Path, *, trusted: bool) -> Any:
    """The Keras model in a ``keras`` file, for jobs that need the model itself (conversion
    to ONNX). ``trusted`` is the version's ``trust_pickle``.

    Raises:
        InvalidModel, MissingDependency: as for ``KerasRuntime.load``.
    """
    return _open_keras(path, trusted)[1]


def _keras() -> Any:
    import_tensorflow()
    try:
        import keras
    except ImportError as exc:
        raise MissingDependency(MISSING) from exc
    return keras


def _open_keras(path: Path, trusted: bool) -> tuple[Any, Any, bool]:
    """TensorFlow, the model, and whether it needed ``safe_mode=False``."""
    check_keras_archive(path)
    tf, keras = import_tensorflow(), _keras()
    unsafe = False
    try:
        try:
            model = _load_keras(keras, path, safe_mode=True)
        except ValueError as exc:
            if "safe_mode" not in str(exc):
                raise
            if not trusted:
                raise InvalidModel(_UNSAFE_KERAS.format(name=path.name)) from None
            unsafe = True
            model = _load_keras(keras, path, safe_mode=False)
    except InvalidModel:
        raise
    except Exception as exc:  # Keras' errors for damaged archives share no narrower base
        message = f"{path.name} could not be loaded as a Keras model: {short_message(exc)}"
        raise InvalidModel(message) from exc
    if not isinstance(model, keras.Model):
        raise UnsupportedFormat(f"{path.name} holds a {type(model).__name__}, not a Keras model")
    return tf, model, unsafe


def _load_keras(keras: Any, path: Path, *, safe_mode: bool) -> Any:
    with warnings.catch_warnings():
        # Keras warns when a saved optimizer or compile config is skipped; serving needs neither.
        warnings.filterwarnings("ignore", message=r"Skipping variable loading for optimizer")
        warnings.filterwarnings("ignore", message=r".*compile.*", category=UserWarning)
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)


def open_saved_model(path: Path, *, trusted: bool) -> tuple[Any, Any, Any]:
    """TensorFlow, the loaded SavedModel, and its ``serving_default`` function, for the
    runtime and for jobs (conversion to ONNX). ``trusted`` is the version's ``trust_pickle``.

    Raises:
        InvalidModel, MissingDependency, UnsupportedFormat: as for ``SavedModelRuntime.load``.
    """
    graph = check_saved_model(path)
    tf = import_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        if graph.suffix == ".pbtxt":
            text_format = importlib.import_module("google.protobuf.text_format")
            text_format.Parse(graph.read_text(), proto)
        else:
            proto.ParseFromString(graph.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and ParseError share no public base
        message = f"{path.name}: {graph.name} is damaged or truncated: {short_message(exc)}"
        raise InvalidModel(message) from None
    found = unsafe_ops(proto)
    if found and not trusted:
        raise InvalidModel(
            f"{path.name}: the graph uses operations that read or write files or run Python "
            f"({', '.join(found)}); modelport loads it only with --trust-pickle (add it if you "
            "trust its source), or convert the model to ONNX"
        )
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises OSError, ValueError, its own errors...
        message = f"{path.name} could not be loaded as a SavedModel: {short_message(exc)}"
        raise InvalidModel(message) from exc
    signatures = getattr(loaded, "signatures", {})
    if SERVING_KEY not in signatures:
        raise UnsupportedFormat(
            f"{path.name} has no {SERVING_KEY!r} signature to serve (it has "
            f"{signature_keys(signatures)}); save it with signatures={{'{SERVING_KEY}': f}}"
        )
    return tf, loaded, signatures[SERVING_KEY]
