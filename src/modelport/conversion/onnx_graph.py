"""Fitting a converter's ONNX graph to the signature of the model it was converted from.

Clients of ``iris@1`` should be able to call ``iris@2`` unchanged, so the converted graph
keeps the source's input and output names, input datatypes and output ranks:

- outputs are renamed to the source's names: by name where they agree, else in order when
  as many are left on both sides (skl2onnx calls a regressor's output ``variable``);
- an input the converter took in another datatype (LightGBM computes in float64, its ONNX
  trees in float32) keeps the source's datatype and is cast inside the graph;
- an output with an extra trailing dimension of 1 (``[N, 1]`` for a ``[-1]`` prediction)
  is squeezed;
- a dimension the source leaves dynamic (-1) is made symbolic where the converter wrote a
  fixed size (onnxmltools declares LightGBM's labels as ``[1]``).

Output datatypes stay what the graph computes: a float32 graph does not become more precise
by casting its result to float64, and parity is judged at the coarser precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from modelport.errors import InvalidModel
from modelport.types import DataType, Signature, TensorSpec

__all__ = ["conform", "opsets"]

_ELEMENT_TYPES: dict[DataType, int] = {
    DataType.FP32: onnx.TensorProto.FLOAT,
    DataType.FP64: onnx.TensorProto.DOUBLE,
    DataType.FP16: onnx.TensorProto.FLOAT16,
    DataType.INT8: onnx.TensorProto.INT8,
    DataType.INT16: onnx.TensorProto.INT16,
    DataType.INT32: onnx.TensorProto.INT32,
    DataType.INT64: onnx.TensorProto.INT64,
    DataType.UINT8: onnx.TensorProto.UINT8,
    DataType.UINT16: onnx.TensorProto.UINT16,
    DataType.UINT32: onnx.TensorProto.UINT32,
    DataType.UINT64: onnx.TensorProto.UINT64,
    DataType.BOOL: onnx.TensorProto.BOOL,
    DataType.BYTES: onnx.TensorProto.STRING,
}
_DEFAULT_DOMAINS = ("", "ai.onnx")
_SQUEEZE_AXES_AS_INPUT = 13  # Squeeze took its axes as an attribute before opset 13
_FALLBACK_OPSET = 13  # for graphs that import no default-domain operators at all


def opsets(path: Path) -> dict[str, int]:
    """The operator sets the model at ``path`` imports, e.g. ``{"ai.onnx": 18}``."""
    model = onnx.load(str(path), load_external_data=False)
    return {opset.domain or "ai.onnx": int(opset.version) for opset in model.opset_import}


def conform(path: Path, source: Signature) -> None:
    """Rewrite the model at ``path`` in place to fit ``source`` (see the module docstring).

    External data is neither read nor moved: the graph is rewritten around it.

    Raises:
        InvalidModel: the graph's inputs are not the source's (a converter bug).
    """
    model = onnx.load(str(path), load_external_data=False)
    changed = _conform_inputs(model, source.inputs)
    changed |= _conform_outputs(model, source.outputs)
    if changed:
        onnx.save(model, str(path))


def _conform_inputs(model: Any, specs: tuple[TensorSpec, ...]) -> bool:
    graph = model.graph
    initialized = {tensor.name for tensor in graph.initializer}
    values = {value.name: value for value in graph.input if value.name not in initialized}
    if sorted(values) != sorted(spec.name for spec in specs):
        raise InvalidModel(
            f"the converter named the model's inputs {', '.join(sorted(values)) or 'none'}; "
            f"the source takes {', '.join(spec.name for spec in specs)}"
        )
    changed = False
    for spec in specs:
        value = values[spec.name]
        wanted = _ELEMENT_TYPES[spec.datatype]
        tensor = value.type.tensor_type
        if tensor.elem_type != wanted:
            cast = _unique(graph, f"{spec.name}_cast")
            _replace_uses(graph, spec.name, cast)
            graph.node.insert(0, helper.make_node("Cast", [spec.name], [cast], to=tensor.elem_type))
            tensor.elem_type = wanted
            changed = True
        changed |= _free_dynamic_dims(value, spec)
    return changed


def _conform_outputs(model: Any, specs: tuple[TensorSpec, ...]) -> bool:
    graph = model.graph
    wanted = [spec.name for spec in specs]
    present = [value.name for value in graph.output]
    unmatched_source = [name for name in wanted if name not in present]
    unmatched_graph = [name for name in present if name not in wanted]
    changed = False
    if unmatched_source and len(unmatched_source) == len(unmatched_graph):
        for old, new in zip(unmatched_graph, unmatched_source, strict=True):
            if _used(graph, new):
                _rename(graph, new, _unique(graph, f"{new}_inner"))
            _rename(graph, old, new)
        changed = True
    by_name = {spec.name: spec for spec in specs}
    for value in graph.output:
        spec = by_name.get(value.name)
        if spec is None or spec.shape is None or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) == len(spec.shape) + 1 and dims[-1].dim_value == 1:
            _squeeze_last(model, value)
            changed = True
        changed |= _free_dynamic_dims(value, spec)
    return changed


def _squeeze_last(model: Any, value: Any) -> None:
    graph = model.graph
    rank = len(value.type.tensor_type.shape.dim)
    inner = _unique(graph, f"{value.name}_unsqueezed")
    _rename_producer(graph, value.name, inner)
    opset = _default_opset(model)
    if opset >= _SQUEEZE_AXES_AS_INPUT:
        axes = _unique(graph, f"{value.name}_axes")
        graph.initializer.append(helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [rank - 1]))
        graph.node.append(helper.make_node("Squeeze", [inner, axes], [value.name]))
    else:
        graph.node.append(helper.make_node("Squeeze", [inner], [value.name], axes=[rank - 1]))
    value.type.tensor_type.shape.dim.pop()


def _default_opset(model: Any) -> int:
    for opset in model.opset_import:
        if opset.domain in _DEFAULT_DOMAINS:
            return int(opset.version)
    model.opset_import.append(helper.make_opsetid("", _FALLBACK_OPSET))
    return _FALLBACK_OPSET


def _free_dynamic_dims(value: Any, spec: TensorSpec) -> bool:
    """Make symbolic the dimensions ``spec`` leaves dynamic but the graph fixed."""
    if spec.shape is None or not value.type.HasField("tensor_type"):
        return False
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(spec.shape):
        return False
    changed = False
    for index, (dim, wanted) in enumerate(zip(dims, spec.shape, strict=True)):
        if wanted < 0 and dim.HasField("dim_value"):
            dim.dim_param = "batch" if index == 0 else f"{spec.name}_{index}"
            changed = True
    return changed


def _walk(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _walk(attribute.g)
            for subgraph in attribute.graphs:
                yield from _walk(subgraph)


def _used(graph: Any, name: str) -> bool:
    names = {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
    names.update(tensor.name for tensor in graph.initializer)
    for node in _walk(graph):
        names.update(node.input)
        names.update(node.output)
    return name in names


def _unique(graph: Any, stem: str) -> str:
    name, counter = stem, 0
    while _used(graph, name):
        counter += 1
        name = f"{stem}_{counter}"
    return name


def _replace_uses(graph: Any, old: str, new: str) -> None:
    for node in _walk(graph):
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _rename_producer(graph: Any, old: str, new: str) -> None:
    """The value ``old`` is computed as ``new`` instead; its readers follow."""
    for node in _walk(graph):
        for index, name in enumerate(node.output):
            if name == old:
                node.output[index] = new
    _replace_uses(graph, old, new)
    for value in graph.value_info:
        if value.name == old:
            value.name = new


def _rename(graph: Any, old: str, new: str) -> None:
    _rename_producer(graph, old, new)
    for value in graph.output:
        if value.name == old:
            value.name = new
