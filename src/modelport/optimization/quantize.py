"""The int8 recipes: dynamic quantization, and static QDQ quantization calibrated on data.

onnxruntime.quantization does the work; this module chooses its options (``Recipe``) and
prepares the graph (pre-processing, node names, the classifier head to keep in float).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    from modelport.optimization.recipes import Recipe

__all__ = ["dynamic", "static"]

_HEAD = ("MatMul", "Gemm")

CalibrationFactory = Callable[[], "CalibrationDataReader"]


def dynamic(recipe: Recipe, source: Path, target: Path) -> dict[str, Any]:
    from onnx import TensorProto
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        per_channel=recipe.per_channel,
        weight_type=_quant_type(recipe.weight_type),
        nodes_to_exclude=list(recipe.exclude_nodes),
        # Fused contrib operators (SkipLayerNormalization, BiasGelu) have no ONNX shape
        # inference; their outputs are float.
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
    )
    return {}


def static(
    recipe: Recipe, source: Path, target: Path, workdir: Path, calibration: CalibrationFactory
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = workdir / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(prepared))
        preprocessed = True
    except Exception:  # a graph symbolic shape inference cannot follow: quantize it as is
        prepared.write_bytes(source.read_bytes())
        preprocessed = False
    model = onnx.load(str(prepared))
    _name_nodes(model)
    _flatten_gemm_biases(model)
    onnx.save(model, str(prepared))
    excluded = list(recipe.exclude_nodes)
    if recipe.exclude_head:
        excluded += [name for name in _head_nodes(model) if name not in excluded]
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.method]
    quantize_static(
        str(prepared),
        str(target),
        calibration(),
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        activation_type=_quant_type(recipe.activation_type),
        weight_type=_quant_type(recipe.weight_type),
        calibrate_method=method,
        nodes_to_exclude=excluded,
    )
    return {"preprocessed": preprocessed, "excluded_nodes": excluded}


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def _name_nodes(model: onnx.ModelProto) -> None:
    # Nodes are excluded from quantization by name; exporters leave some unnamed.
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _flatten_gemm_biases(model: onnx.ModelProto) -> None:
    # Pre-processing fuses MatMul + Add into a Gemm whose bias keeps the Add's [1, N] shape;
    # onnxruntime's per-channel bias handling indexes the bias by channel and fails on a
    # row. [N] broadcasts exactly as [1, N] does.
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        bias = (
            initializers.get(node.input[2])
            if node.op_type == "Gemm" and len(node.input) > 2
            else None
        )
        if bias is None or len(bias.dims) != 2 or bias.dims[0] != 1:
            continue
        users = sum(name == bias.name for other in model.graph.node for name in other.input)
        if users == 1:
            bias.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(bias).reshape(-1), bias.name)
            )


def _head_nodes(model: onnx.ModelProto) -> list[str]:
    """The last MatMul/Gemm (the classifier, in a topologically sorted graph) and every
    Softmax: where int8 rounding changes which class wins."""
    heads = [node.name for node in model.graph.node if node.op_type in _HEAD]
    softmax = [node.name for node in model.graph.node if node.op_type == "Softmax"]
    return heads[-1:] + softmax
