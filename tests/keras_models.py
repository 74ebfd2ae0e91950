"""Small Keras 3 networks built at test time, and the ways Keras and TensorFlow save them.

Weights come from a fixed seed, so a network built twice computes the same function::

    model = digits_cnn()
    save_keras(model, tmp / "cnn.keras")          # Keras 3 archive
    export_saved_model(model, tmp / "cnn_saved")  # TensorFlow SavedModel (model.export)
    expected = model.predict(images, verbose=0)

Inputs are scikit-learn's bundled 8x8 digits, scaled to [0, 1]: no download.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits

__all__ = [
    "digits",
    "digits_cnn",
    "export_saved_model",
    "lambda_model",
    "predict",
    "save_keras",
    "two_heads",
]


def digits(rows: int = 8) -> npt.NDArray[np.float32]:
    """The first ``rows`` digit images as float32 ``[rows, 8, 8, 1]`` in [0, 1]."""
    images = load_digits().images[:rows] / 16.0
    return images.reshape(rows, 8, 8, 1).astype(np.float32)


def digits_cnn(seed: int = 0) -> keras.Model:
    """Conv → ReLU → pool → dense softmax on 8x8 digits: input ``image``, output ``digit``."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(x)
    return keras.Model(image, digit, name="digits_cnn")


def two_heads(seed: int = 1) -> keras.Model:
    """Dict in, dict out: ``features`` [-1, 4] and ``bias`` [-1, 3] give ``scores`` and
    ``total`` (keys deliberately unsorted, to test the order outputs are served in)."""
    keras.utils.set_random_seed(seed)
    features = keras.Input((4,), name="features")
    bias = keras.Input((3,), name="bias")
    scores = keras.layers.Dense(3, name="scores")(features)
    total = keras.layers.Add(name="total")([scores, bias])
    return keras.Model(
        {"features": features, "bias": bias}, {"total": total, "scores": scores}, name="heads"
    )


def lambda_model() -> keras.Model:
    """A ``Lambda`` layer holding a Python lambda: loads only with ``safe_mode=False``."""
    rows = keras.Input((4,), name="rows")
    doubled = keras.layers.Lambda(lambda t: t * 2.0, name="doubled")(rows)
    return keras.Model(rows, doubled)


def save_keras(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


def export_saved_model(model: keras.Model, directory: Path) -> Path:
    """``model.export(directory)``: a SavedModel whose ``serving_default`` is the model."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its endpoints even when quiet
        model.export(directory, verbose=False)
    return directory


def predict(model: keras.Model, inputs: Any) -> Any:
    """Keras' own ``model.predict``, quietly."""
    return model.predict(inputs, verbose=0)
