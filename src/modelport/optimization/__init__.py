"""Optimization that measures: recipes on ONNX models, each result measured against its
parent and gated before it is stored.

    import modelport

    result = modelport.optimize("cnn@2", quantize="int8", calibration="digits@2:train",
                                validate="digits@2:val", max_accuracy_drop=0.01)
    result.version.ref, result.report.measurement.speedup

The recipes are in ``recipes``, the measurement in ``measure``, the gates in ``gates``, the
``--auto`` grid in ``auto``; ``job`` runs them as a derive job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from modelport.optimization.gates import DEFAULT_MIN_AGREEMENT, OBJECTIVES, Gates, Verdict
from modelport.optimization.job import (
    DEFAULT_BUDGET_SECONDS,
    Data,
    DataSource,
    OptimizationResult,
    run_optimization,
)
from modelport.optimization.measure import Agreement, Measurement, Side, Speed
from modelport.optimization.recipes import Recipe
from modelport.optimization.report import Candidate
from modelport.registry import Registry
from modelport.types import ModelRef

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "OBJECTIVES",
    "Agreement",
    "Candidate",
    "Gates",
    "Measurement",
    "OptimizationResult",
    "Recipe",
    "Side",
    "Speed",
    "Verdict",
    "optimize",
    "recipes_for",
]

QUANTIZE = ("int8", "int8-dynamic")


def optimize(
    ref: ModelRef | str,
    *,
    quantize: str | None = None,
    fp16: bool = False,
    graph: bool = False,
    fusion: bool = False,
    auto: bool = False,
    calibration: DataSource = None,
    validate: DataSource = None,
    calibration_rows: int = 256,
    calibration_method: str = "minmax",
    per_channel: bool = False,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    exclude_nodes: Sequence[str] = (),
    graph_level: str = "extended",
    max_accuracy_drop: float | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    objective: str = "latency",
    input_map: Mapping[str, str] | None = None,
    label: str | None = None,
    threads: int = 1,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    name: str | None = None,
    aliases: Iterable[str] = (),
    registry: Registry | None = None,
    show_progress: bool = True,
    say: Callable[[str], None] | None = None,
    on_candidates: Callable[[Sequence[Candidate]], None] | None = None,
) -> OptimizationResult:
    """Optimize the version ``ref`` names and store the result as a new version, if it
    passes every gate.

    Choose one recipe (``quantize="int8"`` static QDQ, ``"int8-dynamic"``, ``fp16``,
    ``graph``, ``fusion``: transformer fusion, with ``quantize="int8-dynamic"`` fused then
    quantized), or ``auto`` to try every recipe that applies and keep the best. A version
    that is not ONNX is converted first (``say`` is told so), and both versions are stored.

    Args:
        calibration: static int8's calibration rows: a dataset reference
            (``digits@2:train``) or a ``Feed``; its first ``calibration_rows`` rows are
            used. Default: the ``validate`` rows, else generated ones.
        validate: rows to compare on and, when labelled, to measure the task metric on.
            Default: generated rows (agreement only).
        calibration_method, per_channel, activation_type, weight_type, exclude_nodes:
            static int8's options (``Recipe``); ``graph_level``: ``extended`` or ``all``.
        max_accuracy_drop: the most the task metric may drop (0.01: one point); needs
            labelled ``validate`` rows.
        min_agreement: the least agreement with the parent's outputs (top-1 for
            classifiers, cosine for embeddings).
        objective: ``latency`` (batch 1), ``throughput`` or ``size``: the candidate must be
            no worse than the parent on it, and ``auto`` keeps the best on it.
        input_map, label: how dataset columns feed the model (``load_feed``).
        threads: intra-op threads both models are measured with.
        budget_seconds: time for each candidate's timed rounds (at least 3 rounds run).
        name, aliases: where to store the version (default: the parent's model).
        on_candidates: called with every measured candidate before one is chosen.

    Raises:
        InvalidInput: bad options, or data that cannot feed the model.
        UnsupportedFormat: the recipe does not apply (the reason is given), or no recipe
            applies with ``auto``.
        GateFailed: no candidate passed every gate (which one, by how much); nothing stored.
        NotFound, VerificationFailed, and the conversion's errors.
    """
    chosen = recipes_for(
        quantize=quantize, fp16=fp16, graph=graph, fusion=fusion, auto=auto,
        calibration_method=calibration_method, per_channel=per_channel,
        activation_type=activation_type, weight_type=weight_type,
        exclude_nodes=exclude_nodes, graph_level=graph_level,
    )  # fmt: skip
    gates = Gates(min_agreement, max_accuracy_drop, objective)
    data = Data(calibration, validate, calibration_rows, input_map, label)
    owned = registry is None
    if registry is None:
        from modelport.config import load_settings

        registry = Registry(load_settings())
    try:
        return run_optimization(
            registry, ref, chosen, gates, data, threads=threads,
            budget_seconds=budget_seconds, name=name, aliases=aliases,
            show_progress=show_progress, say=say, on_candidates=on_candidates,
        )  # fmt: skip
    finally:
        if owned:
            registry.close()


def recipes_for(
    *,
    quantize: str | None = None,
    fp16: bool = False,
    graph: bool = False,
    fusion: bool = False,
    auto: bool = False,
    calibration_method: str = "minmax",
    per_channel: bool = False,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    exclude_nodes: Sequence[str] = (),
    graph_level: str = "extended",
) -> list[Recipe] | None:
    """The one recipe the options ask for (``None``: the ``auto`` grid).

    Raises:
        InvalidInput: no recipe, more than one, or an unknown option value.
    """
    from modelport.errors import InvalidInput

    if quantize is not None and quantize not in QUANTIZE:
        raise InvalidInput(f"unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    asked = [flag for flag, on in (("--quantize", quantize), ("--fp16", fp16), ("--graph", graph),
                                   ("--fusion", fusion)) if on]  # fmt: skip
    if auto:
        if asked:
            raise InvalidInput(f"--auto chooses the recipe itself; drop {', '.join(asked)}")
        return None
    if fusion and quantize not in (None, "int8-dynamic"):
        raise InvalidInput("--fusion combines with --quantize int8-dynamic only")
    if not asked:
        raise InvalidInput(
            "choose a recipe: --quantize int8|int8-dynamic, --fp16, --graph, --fusion, or --auto"
        )
    if len(asked) > 1 and not (fusion and len(asked) == 2 and quantize):
        raise InvalidInput(f"choose one recipe, not {' and '.join(asked)} (or --auto)")
    names = tuple(exclude_nodes)
    if fusion:
        return [Recipe("fusion", int8=quantize is not None, per_channel=per_channel)]
    if fp16:
        return [Recipe("fp16")]
    if graph:
        return [Recipe("graph", level=graph_level)]
    if quantize == "int8-dynamic":
        return [Recipe("int8-dynamic", per_channel=per_channel, weight_type=weight_type,
                       exclude_nodes=names)]  # fmt: skip
    return [
        Recipe("int8", method=calibration_method, per_channel=per_channel,
               activation_type=activation_type, weight_type=weight_type, exclude_nodes=names)
    ]  # fmt: skip
