"""Keras (``keras``) and TensorFlow (``tf_savedmodel``) models to ONNX, with tf2onnx.

Which path, checked against TensorFlow 2.21, Keras 3.15 and tf2onnx 1.17:

- ``keras``: Keras' own ``model.export(path, format="onnx")``. With the TensorFlow backend
  it traces the model into a ``tf.function`` and hands it to ``tf2onnx.convert.from_function``
  after patching tf2onnx for NumPy 2. ``tf2onnx.convert.from_keras`` converts a one-input
  Keras 3 model but fails on a model taking a dict of inputs ("Functional.call() ... missing
  required positional argument"), so it is not used. The input signature is passed
  explicitly: a loaded model that was never called is refused otherwise ("The model provided
  has never called").
- ``tf_savedmodel``: ``tf2onnx.convert.from_function`` on the ``serving_default`` function,
  wrapped to take its inputs positionally and return its outputs in the signature's order
  (tf2onnx names them ``Identity:0`` ...; ``onnx_graph.conform`` renames them in order).

tf2onnx logs every step at INFO and Keras' patch warns about ``np.object``; both are quietened
while the converter runs (the logger's level is restored afterwards).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from modelport.conversion.converters import ConversionSource, Exported, require
from modelport.runtimes.tensorflow.model import import_tensorflow
from modelport.runtimes.tensorflow.runtime import open_saved_model, read_keras_model
from modelport.runtimes.tensorflow.signature import keras_signature, saved_model_signature
from modelport.types import DataType, TensorSpec

__all__ = ["from_keras", "from_saved_model"]

_FILE = "model.onnx"
_WHAT = "Keras and TensorFlow models"


def from_keras(source: ConversionSource) -> Exported:
    """Keras' ``model.export(format="onnx")`` on the loaded model (see the module docstring)."""
    tf, tf2onnx = _tensorflow()
    model = read_keras_model(source.path, trusted=source.record.trust_pickle)
    signature, input_kind, _ = keras_signature(model)
    specs = [_tensor_spec(tf, spec) for spec in signature.inputs]
    if input_kind == "dict":
        structure: Any = [
            {spec.name: tensor for spec, tensor in zip(signature.inputs, specs, strict=True)}
        ]
    elif input_kind == "list":
        structure = [specs]
    else:
        structure = specs
    path = source.directory / _FILE
    with _quiet_converter():
        model.export(
            str(path),
            format="onnx",
            verbose=False,
            input_signature=structure,
            opset_version=source.opset,
        )
    return Exported(path, "keras", str(_keras_version()), exporter=f"tf2onnx {tf2onnx.__version__}")


def from_saved_model(source: ConversionSource) -> Exported:
    """``tf2onnx.convert.from_function`` on the ``serving_default`` signature."""
    tf, tf2onnx = _tensorflow()
    _, _, function = open_saved_model(source.path, trusted=source.record.trust_pickle)
    signature = saved_model_signature(function)
    names = [spec.name for spec in signature.inputs]
    outputs = signature.output_names()
    specs = [_tensor_spec(tf, spec) for spec in signature.inputs]

    def positional(*tensors: Any) -> list[Any]:
        result = function(**dict(zip(names, tensors, strict=True)))
        return [result[name] for name in outputs]

    path = source.directory / _FILE
    with _quiet_converter():
        _patch_for_numpy2()
        tf2onnx.convert.from_function(
            tf.function(positional, input_signature=specs, autograph=False),
            input_signature=specs,
            opset=source.opset,
            output_path=str(path),
        )
    return Exported(path, "tf2onnx", str(tf2onnx.__version__))


def _tensorflow() -> tuple[Any, Any]:
    tf = import_tensorflow()
    tf2onnx = require("tf2onnx", _WHAT, "tensorflow")
    return tf, tf2onnx


def _keras_version() -> str:
    import keras

    return str(keras.__version__)


def _patch_for_numpy2() -> None:
    """Keras' fix-ups of tf2onnx for NumPy 2 (``np.cast`` and ``np.object`` are gone), which
    ``model.export(format="onnx")`` applies too; without Keras, tf2onnx runs as it is."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:
        return
    patch_tf2onnx()


def _tensor_spec(tf: Any, spec: TensorSpec) -> Any:
    shape = None if spec.shape is None else [None if dim < 0 else dim for dim in spec.shape]
    dtype = tf.string if spec.datatype is DataType.BYTES else tf.as_dtype(spec.datatype.numpy)
    return tf.TensorSpec(shape, dtype, name=spec.name)


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """tf2onnx's logger at errors only, and Keras' ``np.object`` warning filtered.

    Both are process-wide: a warning another thread raises meanwhile with this message goes
    unseen, and the logger's level is restored afterwards.
    """
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"In the future `np\.object`")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)
