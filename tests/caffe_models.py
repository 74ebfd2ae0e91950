"""A small Caffe network written by hand, its weights file, and its function in plain numpy.

The weights file is a ``caffe.NetParameter`` in protobuf's binary encoding. Its schema is
built here at run time from the public field numbers of Caffe's ``caffe.proto`` (only the
fields a weights file needs), so no generated code is kept::

    weights = tiny_weights()
    write_caffemodel(tmp / "weights.caffemodel", weights)
    (tmp / "deploy.prototxt").write_text(tiny_prototxt())
    expected = reference_forward(images, weights)  # what the served model should give

The network: Input 3x8x8 → Convolution (4 maps, 3x3, pad 1) → ReLU → max Pooling 2x2/2 →
InnerProduct (5) → Softmax, named ``data`` → ... → ``prob``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "INPUT_FORMS",
    "reference_forward",
    "stacked_prototxt",
    "tiny_prototxt",
    "tiny_weights",
    "write_caffemodel",
]

Weights = dict[str, list[np.ndarray[Any, Any]]]
_FIELD = descriptor_pb2.FieldDescriptorProto

# How a deploy prototxt declares its input, the three ways Caffe allows.
INPUT_FORMS = {
    "input_layer": (
        'layer { name: "data" type: "Input" top: "data"\n'
        "  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n"
    ),
    "input_shape": 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n',
    "input_dim": 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n',
    "no_shape": 'input: "data"\n',
}

_LAYERS = """\
layer {
  name: "conv1"  type: "Convolution"  bottom: "data"  top: "conv1"
  convolution_param { num_output: 4  kernel_size: 3  pad: 1 }
}
layer { name: "relu1"  type: "ReLU"  bottom: "conv1"  top: "conv1" }  # in place, as Caffe does
layer {
  name: "pool1"  type: "Pooling"  bottom: "conv1"  top: "pool1"
  pooling_param { pool: MAX  kernel_size: 2  stride: 2 }
}
layer {
  name: "fc1"  type: "InnerProduct"  bottom: "pool1"  top: "fc1"
  inner_product_param { num_output: 5 }
}
layer { name: "prob"  type: "Softmax"  bottom: "fc1"  top: "prob" }
"""


def tiny_prototxt(form: str = "input_layer", layers: str = _LAYERS) -> str:
    """The deploy prototxt, its input declared as ``INPUT_FORMS[form]``."""
    return f'name: "tiny"\n{INPUT_FORMS[form]}{layers}'


def stacked_prototxt() -> str:
    """The tiny net with its batch stacked twice (Concat on axis 0) before ``fc1``: 2N rows
    out for N in, so its outputs do not follow the batch and its signature keeps batch 1."""
    concat = (
        'layer { name: "twice"  type: "Concat"  bottom: "pool1"  bottom: "pool1"  top: "twice"\n'
        "  concat_param { axis: 0 } }\n"
    )
    fc1 = 'layer {\n  name: "fc1"'
    layers = _LAYERS.replace(fc1, concat + fc1).replace(
        'bottom: "pool1"  top: "fc1"', 'bottom: "twice"  top: "fc1"'
    )
    return tiny_prototxt(layers=layers)


def tiny_weights(seed: int = 0) -> Weights:
    """Random weights (fixed ``seed``) for the learned layers, in Caffe's blob shapes."""
    rng = np.random.default_rng(seed)

    def blob(*shape: int) -> np.ndarray[Any, Any]:
        return rng.standard_normal(shape).astype(np.float32) * 0.5

    return {"conv1": [blob(4, 3, 3, 3), blob(4)], "fc1": [blob(5, 4 * 4 * 4), blob(5)]}


@cache
def _net_parameter() -> Any:
    """The ``caffe.NetParameter`` message class, for the subset of fields used here."""
    file = descriptor_pb2.FileDescriptorProto(
        name="modelport_tests_caffe.proto", package="caffe", syntax="proto2"
    )

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            field = proto.field.add(
                name=field_name, number=number, type=kind, label=_FIELD.LABEL_REPEATED
            )
            if type_name:
                field.type_name = type_name
            elif kind != _FIELD.TYPE_STRING:
                field.options.packed = True  # as caffe.proto declares its numeric arrays
        for field in proto.field:
            if field.name in ("name", "type", "shape"):
                field.label = _FIELD.LABEL_OPTIONAL

    message("BlobShape", ("dim", 1, _FIELD.TYPE_INT64, ""))
    message(
        "BlobProto",
        ("data", 5, _FIELD.TYPE_FLOAT, ""),
        ("shape", 7, _FIELD.TYPE_MESSAGE, ".caffe.BlobShape"),
    )
    message(
        "LayerParameter",
        ("name", 1, _FIELD.TYPE_STRING, ""),
        ("type", 2, _FIELD.TYPE_STRING, ""),
        ("blobs", 7, _FIELD.TYPE_MESSAGE, ".caffe.BlobProto"),
    )
    message(
        "NetParameter",
        ("name", 1, _FIELD.TYPE_STRING, ""),
        ("layer", 100, _FIELD.TYPE_MESSAGE, ".caffe.LayerParameter"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


def write_caffemodel(path: Path, weights: Weights, types: dict[str, str] | None = None) -> Path:
    """Write ``weights`` (layer name → blobs) as a binary ``caffe.NetParameter``."""
    kinds = {"conv1": "Convolution", "fc1": "InnerProduct", **(types or {})}
    net = _net_parameter()(name="tiny")
    for name, blobs in weights.items():
        layer = net.layer.add(name=name, type=kinds.get(name, ""))
        for array in blobs:
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return path


def reference_forward(images: np.ndarray[Any, Any], weights: Weights) -> np.ndarray[Any, Any]:
    """The tiny network in numpy, float64: what Caffe computes for ``images`` (N, 3, 8, 8)."""
    kernel, kernel_bias = (w.astype(np.float64) for w in weights["conv1"])
    dense, dense_bias = (w.astype(np.float64) for w in weights["fc1"])
    count, _, height, width = images.shape
    padded = np.pad(images.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    maps = np.zeros((count, kernel.shape[0], height, width))
    for row in range(height):
        for col in range(width):
            window = padded[:, :, row : row + 3, col : col + 3]  # (N, C, 3, 3)
            maps[:, :, row, col] = np.einsum("nchw,ochw->no", window, kernel)
    maps = np.maximum(maps + kernel_bias[None, :, None, None], 0)
    pooled = maps.reshape(count, kernel.shape[0], height // 2, 2, width // 2, 2).max(axis=(3, 5))
    logits = pooled.reshape(count, -1) @ dense.T + dense_bias
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
