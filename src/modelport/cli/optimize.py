"""``modelport optimize``: recipes, measured against the parent, gated, stored if they pass."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from modelport.cli import render
from modelport.cli.options import AliasOption, JsonFlag, NameOption
from modelport.config import load_settings
from modelport.errors import InvalidInput
from modelport.registry import Registry

__all__ = ["optimize"]

_DEFAULT_BUDGET = 5.0


def optimize(
    ref: Annotated[str, typer.Argument(help="The version to optimize: name@3 or name@alias.")],
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", help="int8 (static QDQ, calibrated) or int8-dynamic."),
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Half-precision weights; float inputs/outputs kept.")
    ] = False,
    graph: Annotated[
        bool, typer.Option("--graph", help="onnxruntime's graph optimizations, saved offline.")
    ] = False,
    fusion: Annotated[
        bool,
        typer.Option(
            "--fusion",
            help="Transformer fusion (Hugging Face models); with --quantize int8-dynamic after.",
        ),
    ] = False,
    auto: Annotated[
        bool, typer.Option("--auto", help="Try every recipe that applies; keep the best.")
    ] = False,
    calibration: Annotated[
        str | None,
        typer.Option("--calibration", help="Dataset for int8 calibration, e.g. digits@2:train."),
    ] = None,
    calibration_rows: Annotated[
        int, typer.Option("--calibration-rows", help="Calibration rows used.")
    ] = 256,
    calibration_method: Annotated[
        str, typer.Option("--calibration-method", help="minmax, entropy or percentile.")
    ] = "minmax",
    per_channel: Annotated[
        bool, typer.Option("--per-channel", help="One scale per weight output channel.")
    ] = False,
    activation_type: Annotated[
        str, typer.Option("--activation-type", help="int8: uint8 (U8S8) or int8 (S8S8).")
    ] = "uint8",
    weight_type: Annotated[str, typer.Option("--weight-type", help="int8 or uint8.")] = "int8",
    exclude_nodes: Annotated[
        list[str] | None,
        typer.Option("--exclude-nodes", help="Keep this node in float; repeatable."),
    ] = None,
    graph_level: Annotated[
        str, typer.Option("--graph-level", help="--graph: extended or all.")
    ] = "extended",
    validate: Annotated[
        str | None,
        typer.Option("--validate", help="Dataset to compare on (and score, if labelled)."),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option("--max-accuracy-drop", help="Most the task metric may drop (0.01 = 1 point)."),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option("--min-agreement", help="Least agreement with the parent.")
    ] = 0.99,
    objective: Annotated[
        str,
        typer.Option(
            "--objective", help="latency, throughput or size: never worse than the parent."
        ),
    ] = "latency",
    input_map: Annotated[
        list[str] | None,
        typer.Option("--input-map", help="INPUT=COLUMN: which column feeds an input; repeatable."),
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="The label column.")] = None,
    threads: Annotated[
        int, typer.Option("--threads", help="Intra-op threads both models run with.")
    ] = 1,
    budget_seconds: Annotated[
        float,
        typer.Option("--budget-seconds", help="Timed measurement per candidate, in seconds."),
    ] = _DEFAULT_BUDGET,
    name: NameOption = None,
    alias: AliasOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Optimize a version (int8, fp16, graph, fusion, or --auto), measure it against its
    parent on this machine, and store it only if it passes every gate."""
    from modelport.optimization import optimize as run
    from modelport.optimization.report import CANDIDATE_HEADERS, Candidate, candidate_rows

    def show_candidates(candidates: Sequence[Candidate]) -> None:
        if not as_json:
            render.table(CANDIDATE_HEADERS, candidate_rows(candidates))

    with Registry(load_settings()) as registry:
        result = run(
            ref, quantize=quantize, fp16=fp16, graph=graph, fusion=fusion, auto=auto,
            calibration=calibration, validate=validate, calibration_rows=calibration_rows,
            calibration_method=calibration_method, per_channel=per_channel,
            activation_type=activation_type, weight_type=weight_type,
            exclude_nodes=exclude_nodes or (), graph_level=graph_level,
            max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
            objective=objective, input_map=_pairs(input_map or []), label=label,
            threads=threads, budget_seconds=budget_seconds, name=name, aliases=alias or [],
            registry=registry, say=_say, on_candidates=show_candidates,
        )  # fmt: skip
    if as_json:
        render.print_json(result.to_dict())
        return
    for recipe, reason in result.skipped:
        _say(f"skipped {recipe.label}: {reason}")
    measured = result.report.measurement
    assert measured is not None
    render.console().print(
        f"optimized {result.parent.ref} → [bold]{result.version.ref}[/bold] "
        f"({result.report.recipe.label}): {measured.speedup:.2f}x at batch 1, "
        f"{measured.size_ratio:.2f}x smaller, agreement {measured.agreement.value:.4f} "
        f"({measured.agreement.kind}) on {measured.agreement.rows} {measured.origin} rows"
    )


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InvalidInput(f"--input-map takes INPUT=COLUMN, not {item!r}")
        pairs[key] = value
    return pairs
