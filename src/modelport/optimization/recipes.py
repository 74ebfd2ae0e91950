"""The optimization recipes: each rewrites one ONNX graph file into another.

    recipe = Recipe("int8", method="entropy", activation_type="int8")
    reason = refusal(recipe, onnx.load(path), config)   # None when it applies
    parameters = apply(recipe, path, target, calibration=reader_factory, config=config)

onnxruntime does the work (``onnxruntime.quantization``, ``onnxruntime.transformers``),
imported inside the recipe that needs it (the int8 ones are in ``quantize``). A recipe
never measures: whether its result is better is for ``measure`` and ``gates`` to say.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import InvalidInput, UnsupportedFormat
from modelport.optimization.quantize import CalibrationFactory, dynamic, static

if TYPE_CHECKING:
    import onnx

__all__ = [
    "CALIBRATION_METHODS",
    "GRAPH_LEVELS",
    "KINDS",
    "QUANT_TYPES",
    "Recipe",
    "apply",
    "refusal",
]

KINDS = ("graph", "int8-dynamic", "int8", "fp16", "fusion")
GRAPH_LEVELS = ("extended", "all")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("int8", "uint8")
_QUANTIZABLE = {"Conv", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization"}
# onnxruntime.transformers' optimizer knows these architectures under their own name; the
# BERT-like encoders share its "bert" fusions.
_BERT_LIKE = {
    "bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "camembert", "albert",
}  # fmt: skip
_FUSED = {
    "Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization",
    "EmbedLayerNormalization",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recipe:
    """One way to rewrite a graph, with every parameter it takes (recorded in the lineage).

    ``kind`` is one of ``KINDS``; the other fields apply to the kinds their comments name.
    """

    kind: str
    level: str = "extended"
    """graph: onnxruntime's optimization level, ``extended`` or ``all``."""
    per_channel: bool = False
    """int8, int8-dynamic, fusion with int8: one scale per output channel of a weight (on
    MiniLM, per-tensor int8 keeps a cosine of 0.96 to the float embeddings, per-channel 0.99)."""
    method: str = "minmax"
    """int8: how activation ranges are calibrated (``CALIBRATION_METHODS``)."""
    activation_type: str = "uint8"
    """int8: ``uint8`` (U8S8, with int8 weights) or ``int8`` (S8S8)."""
    weight_type: str = "int8"
    """int8, int8-dynamic: the weights' type."""
    exclude_nodes: tuple[str, ...] = ()
    """int8, int8-dynamic: nodes kept in float, by name."""
    exclude_head: bool = False
    """int8: keep the final classifier (the last MatMul/Gemm) and any Softmax in float."""
    int8: bool = False
    """fusion: quantize the fused graph with dynamic int8 afterwards."""

    def __post_init__(self) -> None:
        checks = (
            ("recipe", self.kind, KINDS),
            ("graph level", self.level, GRAPH_LEVELS),
            ("calibration method", self.method, CALIBRATION_METHODS),
            ("activation type", self.activation_type, QUANT_TYPES),
            ("weight type", self.weight_type, QUANT_TYPES),
        )
        for what, value, allowed in checks:
            if value not in allowed:
                raise InvalidInput(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")

    @property
    def label(self) -> str:
        """A short name for tables, e.g. ``int8 entropy S8S8 per-channel``."""
        if self.kind == "graph":
            return f"graph ({self.level})"
        if self.kind == "fusion":
            if not self.int8:
                return "fusion"
            return "fusion + int8-dynamic" + (" per-channel" if self.per_channel else "")
        words = [self.kind]
        if self.kind == "int8":
            types = "S8S8" if self.activation_type == "int8" else "U8S8"
            words += [self.method, types if self.weight_type == "int8" else "U8U8"]
        elif self.kind == "int8-dynamic" and self.weight_type == "uint8":
            words.append("uint8")
        if self.per_channel:
            words.append("per-channel")
        if self.exclude_head:
            words.append("float head")
        if self.exclude_nodes:
            words.append(f"{len(self.exclude_nodes)} excluded")
        return " ".join(words)

    def parameters(self) -> dict[str, Any]:
        """The recipe's parameters that matter for its kind, for the lineage."""
        used = {
            "graph": ("level",),
            "int8-dynamic": ("per_channel", "weight_type", "exclude_nodes"),
            "int8": ("method", "per_channel", "activation_type", "weight_type",
                     "exclude_nodes", "exclude_head"),
            "fp16": (),
            "fusion": ("int8", "per_channel"),
        }[self.kind]  # fmt: skip
        fields = asdict(self)
        chosen = {key: fields[key] for key in used}
        if "exclude_nodes" in chosen:
            chosen["exclude_nodes"] = list(self.exclude_nodes)
        return {"recipe": self.kind, **chosen}


_ALREADY_QUANTIZED = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
        "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat", "QAttention", "QGemm",
    }
)  # fmt: skip


def refusal(recipe: Recipe, model: onnx.ModelProto, config: dict[str, Any] | None) -> str | None:
    """Why ``recipe`` does not apply to ``model`` (``config``: a Hugging Face model's
    ``config.json``), or ``None`` when it does."""
    ops = {(node.domain or "ai.onnx", node.op_type) for node in model.graph.node}
    if recipe.kind in ("int8", "int8-dynamic") or (recipe.kind == "fusion" and recipe.int8):
        reason = _int8_refusal(ops)
        if reason is not None:
            return reason
    if recipe.kind == "fp16" and not _float_weights(model):
        return "the graph has no float32 weights outside ai.onnx.ml operators to halve"
    if recipe.kind == "fusion":
        if config is None:
            return (
                "transformer fusion applies to Hugging Face transformer models "
                "(format huggingface_onnx, with a config.json); this is a plain ONNX graph"
            )
        if _model_type(config) is None:
            return f"onnxruntime has no fusions for model_type {config.get('model_type')!r}"
    return None


def _int8_refusal(ops: set[tuple[str, str]]) -> str | None:
    trees = sorted(op for domain, op in ops if domain == "ai.onnx.ml" and "TreeEnsemble" in op)
    if trees:
        return (
            f"onnxruntime cannot quantize {', '.join(trees)} (ai.onnx.ml): a tree "
            "ensemble's thresholds and leaf values are attributes, not weight tensors"
        )
    quantized = sorted(op for _, op in ops if op in _ALREADY_QUANTIZED)
    if quantized:
        return (
            f"the graph is already quantized ({', '.join(quantized)}): optimize its "
            "float parent instead"
        )
    if not any(op in _QUANTIZABLE for _, op in ops):
        return "the graph has no Conv, MatMul, Gemm or attention node to quantize"
    return None


def apply(
    recipe: Recipe,
    source: Path,
    target: Path,
    *,
    workdir: Path,
    calibration: CalibrationFactory | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``source`` rewritten by ``recipe`` to ``target``; return what else to record
    (e.g. which nodes were kept in float, which fusions were made).

    ``workdir`` is an empty directory for intermediate files. ``calibration`` makes a fresh
    data reader for static int8 (required there).

    Raises:
        UnsupportedFormat: onnxruntime cannot apply the recipe to this graph.
    """
    try:
        with _quiet():
            return _apply(
                recipe, source, target, workdir=workdir, calibration=calibration, config=config
            )
    except (InvalidInput, UnsupportedFormat):
        raise
    except Exception as exc:  # onnxruntime's tools raise bare exceptions of every kind
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnsupportedFormat(f"{recipe.label} could not be applied: {first}") from exc


@contextmanager
def _quiet() -> Iterator[None]:
    # onnxruntime's quantizer prints its progress to stdout (which carries --json) and logs
    # advice on the root logger; the job reports what matters itself.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _apply(
    recipe: Recipe,
    source: Path,
    target: Path,
    *,
    workdir: Path,
    calibration: CalibrationFactory | None,
    config: dict[str, Any] | None,
) -> dict[str, Any]:
    if recipe.kind == "graph":
        return _graph(recipe, source, target)
    if recipe.kind == "int8-dynamic":
        return dynamic(recipe, source, target)
    if recipe.kind == "int8":
        if calibration is None:
            raise InvalidInput("static int8 needs calibration data")
        return static(recipe, source, target, workdir, calibration)
    if recipe.kind == "fp16":
        return _fp16(source, target)
    return _fusion(recipe, source, target, workdir, config or {})


def _graph(recipe: Recipe, source: Path, target: Path) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if recipe.level == "all"
        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3  # level "all" warns that its layout suits this CPU only
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    # The saved graph is what gets served: it must open in a session with default options.
    ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return {}


def _fp16(source: Path, target: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _sort_nodes(model)
    onnx.save(model, str(target))
    return {"keep_io_types": True}


def _fusion(
    recipe: Recipe, source: Path, target: Path, workdir: Path, config: dict[str, Any]
) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = _model_type(config) or "bert"
    optimized = optimize_model(
        str(source),
        model_type=model_type,
        num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
        use_gpu=False,
    )
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    if not _FUSED & set(fused):
        raise UnsupportedFormat(
            "transformer fusion found no attention or layer-normalization pattern to fuse in "
            f"this {config.get('model_type')} graph"
        )
    made: dict[str, Any] = {"model_type": model_type, "fused": fused}
    if not recipe.int8:
        optimized.save_model_to_file(str(target))
        return made
    fused_path = workdir / "fused.onnx"
    optimized.save_model_to_file(str(fused_path))
    dynamic(Recipe("int8-dynamic", per_channel=recipe.per_channel), fused_path, target)
    return made


def _model_type(config: dict[str, Any]) -> str | None:
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    name = str(config.get("model_type", "")).replace("_", "-")
    if name in _BERT_LIKE:
        return "bert"
    return name if name in MODEL_TYPES else None


def _float_weights(model: onnx.ModelProto) -> bool:
    from onnx import TensorProto

    ml_inputs = {
        name for node in model.graph.node if node.domain == "ai.onnx.ml" for name in node.input
    }
    return any(
        tensor.data_type == TensorProto.FLOAT and tensor.name not in ml_inputs
        for tensor in model.graph.initializer
    )


def _sort_nodes(model: onnx.ModelProto) -> None:
    # The float16 converter appends the output casts at the end of the node list; ONNX's
    # checker (and so the registry) wants the nodes in topological order.
    graph = model.graph
    ready = {value.name for value in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        runnable = [node for node in pending if all(name in ready for name in node.input)]
        if not runnable:  # a cycle or a subgraph's outer name: leave the order as it is
            return
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [node for node in pending if node not in runnable]
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
