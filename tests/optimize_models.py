"""Small real models for the optimization tests, trained or built in seconds.

cnn = digits_cnn(tmp / "cnn.onnx")      # a torch CNN trained on scikit-learn's digits
train, val = digits_feeds()             # Feeds of the same data, with labels
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelport.datasets.feed import Feed
from tests.onnx_models import make_graph_model, make_iris_onnx, tensor

TRAIN_ROWS = 1400


@cache
def digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Digits' 8x8 images as float32 ``[n, 1, 8, 8]`` in [0, 1], and their int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return images, data.target.astype(np.int64)


def digits_feeds() -> tuple[Feed, Feed]:
    """The first 1400 rows (no labels: calibration) and the rest (labelled: validation)."""
    images, labels = digits()
    train = Feed({"image": images[:TRAIN_ROWS]}, None, TRAIN_ROWS, "digits:train")
    rest = len(images) - TRAIN_ROWS
    val = Feed({"image": images[TRAIN_ROWS:]}, labels[TRAIN_ROWS:], rest, "digits:val")
    return train, val


def digits_cnn(path: Path, *, epochs: int = 3, seed: int = 0) -> Path:
    """Conv-BN-ReLU, Conv-ReLU, two linear layers, trained a few epochs on digits (about 90%
    accurate), exported to ONNX with input ``image`` [-1, 1, 8, 8] and output ``logits``."""
    import torch
    from torch import nn

    images, labels = digits()
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 64, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.from_numpy(images[:TRAIN_ROWS]), torch.from_numpy(labels[:TRAIN_ROWS])
    for _ in range(epochs):
        for start in range(0, TRAIN_ROWS, 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x[start : start + 64]), y[start : start + 64])
            loss.backward()
            optimizer.step()
    net.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but quick and enough for a plain CNN.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (x[:1],), str(path), input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
    return path


def iris_mlp(path: Path) -> Path:
    """scikit-learn's MLPClassifier on iris, converted by skl2onnx: ``input`` [-1, 4] in,
    ``output_label`` and ``output_probability`` out."""
    from sklearn.neural_network import MLPClassifier

    from tests.onnx_models import iris_data

    x, y = iris_data()
    mlp = MLPClassifier(hidden_layer_sizes=(32, 32), max_iter=2000, random_state=0).fit(x, y)
    return make_iris_onnx(path, zipmap=False, classifier=mlp)


def digits_mlp(path: Path) -> Path:
    """scikit-learn's MLPClassifier (64 -> 64 -> 10) on digits' pixels, converted by skl2onnx
    without ZipMap: ``X`` [-1, 64] in; each layer is a MatMul + Add (a Gemm with a bias once
    pre-processed)."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    images, labels = digits()
    pixels = images.reshape(len(images), -1)
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    mlp.fit(pixels[:TRAIN_ROWS], labels[:TRAIN_ROWS])
    path.write_bytes(to_onnx(mlp, pixels[:1], options={"zipmap": False}).SerializeToString())
    return path


def iris_forest(path: Path) -> Path:
    """A random forest on iris: ai.onnx.ml TreeEnsembleClassifier, which int8 cannot touch."""
    from tests.tabular_models import sklearn_model

    return make_iris_onnx(path, zipmap=False, classifier=sklearn_model("iris_forest"))


def foldable(path: Path, *, outputs: int = 64, scale: float = 1.0) -> Path:
    """``y = x @ (W + V)`` with ``W + V`` computed in the graph: constant folding stores one
    weight instead of two, so graph optimization makes it smaller. With ``scale`` 10^5 its
    weights are beyond float16's range."""
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((64, outputs)) * scale).astype(np.float32)
    return make_graph_model(
        path,
        [
            helper.make_node("Add", ["W", "V"], ["W2"]),
            helper.make_node("MatMul", ["x", "W2"], ["y"]),
        ],
        [tensor("x", TensorProto.FLOAT, ["batch", 64])],
        [tensor("y", TensorProto.FLOAT, ["batch", outputs])],
        initializers=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(weights[::-1].copy(), "V"),
        ],
    )


def iris_feed() -> Feed:
    """Iris features with no labels."""
    from tests.onnx_models import iris_data

    x, _ = iris_data()
    return Feed({"input": x.astype(np.float32)}, None, len(x), "iris")


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def bert_onnx_directory(directory: Path) -> Path:
    """A ``huggingface_onnx``-shaped directory from a small random BERT classifier
    (``tests.hf_models.save_classifier``): ``model.onnx`` (input_ids, attention_mask ->
    probabilities), ``config.json``, ``tokenizer.json``, ``modelport_hf.json``."""
    import json
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.hf_models import save_classifier

    source = save_classifier(directory / "source")
    model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return torch.softmax(logits, dim=-1)

    target = directory / "bert"
    target.mkdir()
    ids = torch.ones((2, 8), dtype=torch.int64)
    dynamic = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation, tracing notes
        torch.onnx.export(
            Probabilities(), (ids, ids), str(target / "model.onnx"),
            input_names=["input_ids", "attention_mask"], output_names=["probabilities"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic,
                          "probabilities": {0: "batch"}},
            dynamo=False, opset_version=17,
        )  # fmt: skip
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, target / name)
    settings = {"task": "text-classification", "max_length": 16, "output": "probabilities"}
    (target / "modelport_hf.json").write_text(json.dumps(settings))
    return target
