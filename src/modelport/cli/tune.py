"""``modelport tune``: find and store the serving settings that serve a version best."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from modelport.cli import render
from modelport.cli.options import JsonFlag
from modelport.config import load_settings
from modelport.errors import InvalidInput
from modelport.registry import Registry

if TYPE_CHECKING:
    from modelport.tuning import TunePoint, TuneResult

__all__ = ["tune"]

_SETTING_COLUMNS = {
    "instances": "INST",
    "threads": "THR",
    "solo_threads": "SOLO",
    "max_batch_size": "BATCH",
    "max_queue_delay_ms": "DELAY",
}


def tune(
    ref: Annotated[str, typer.Argument(help="The version to tune: name@3 or name@alias.")],
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Concurrent clients to measure at, e.g. 1,8,32.")
    ] = "1,8,32",
    latency_p99_ms: Annotated[
        float | None,
        typer.Option("--latency-p99-ms", help="p99 budget at every concurrency; default: none."),
    ] = None,
    duration: Annotated[
        float, typer.Option("--duration", help="Seconds of load per point and concurrency.")
    ] = 5.0,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="Rows to send (digits@2:val); default: random valid."),
    ] = None,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help="Store the chosen settings on the version.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Measure serving settings on the real server and store the best on the version.

    Each point (instances x threads x batching) runs its own `modelport serve` on
    127.0.0.1; the best throughput at the highest concurrency whose p99 meets the budget at
    every concurrency wins, and `serve` then uses it. Exits 1 when no point met the budget.
    """
    from modelport.tuning import tune as run_tune

    levels = _levels(concurrency)
    progress = None if as_json else _printer()
    with Registry(load_settings()) as registry:
        result = run_tune(
            ref,
            concurrency=levels,
            latency_p99_ms=latency_p99_ms,
            duration=duration,
            registry=registry,
            dataset=dataset,
            store=store,
            progress=progress,
        )
    if as_json:
        render.print_json(result.to_dict())
    else:
        _print_result(result)
    if result.chosen is None:
        sys.stderr.write(
            f"error: no point met p99 <= {latency_p99_ms:g} ms at every concurrency; nothing "
            "stored. Raise --latency-p99-ms or lower --concurrency.\n"
        )
        raise typer.Exit(1)


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInput(f"--concurrency {text!r}: write whole numbers, e.g. 1,8,32") from None
    if not levels:
        raise InvalidInput("--concurrency names no level; write e.g. 1,8,32")
    return levels


def _printer() -> Callable[[str], None]:
    out = render.console()

    def show(line: str) -> None:
        out.print(f"  measured {line}", markup=False)

    return show


def _print_result(result: TuneResult) -> None:
    from rich.table import Table

    out = render.console()
    grid = Table(title=f"serving settings for {result.ref}", title_justify="left", box=None)
    for header in (*_SETTING_COLUMNS.values(), *(f"c={c}" for c in result.concurrency), ""):
        grid.add_column(header, justify="right" if header else "left")
    for point in result.points:
        grid.add_row(*_row(point, result))
    out.print(grid)
    out.print("  (each c= cell: answers/s, p99 ms)", markup=False)
    for note in result.notes:
        out.print(note, markup=False)
    chosen = result.chosen
    if chosen is None:
        return
    gain = chosen.throughput / result.default.throughput if result.default.throughput else 0
    top = result.concurrency[-1]
    where = "stored on" if result.stored else "not stored on (--no-store)"
    out.print(
        f"chosen: {_settings_text(chosen)}: {chosen.throughput:.0f}/s at c={top}, "
        f"{gain:.2f}x the defaults ({result.default.throughput:.0f}/s); {where} {result.ref}",
        markup=False,
    )


def _row(point: TunePoint, result: TuneResult) -> list[str]:
    cells = [str(point.settings.get(key, "-")) for key in _SETTING_COLUMNS]
    for index in range(len(result.concurrency)):
        if index < len(point.results):
            measured = point.results[index]
            cells.append(f"{measured.throughput:.0f}/s {measured.p99_ms:.1f}")
        else:
            cells.append("-")
    notes = []
    if point.is_default:
        notes.append("defaults")
    if point is result.chosen:
        notes.append("chosen")
    if point.skipped:
        notes.append(f"stopped: {point.skipped}")
    cells.append(", ".join(notes))
    return cells


def _settings_text(point: TunePoint) -> str:
    return " ".join(f"{key}={value}" for key, value in point.settings.items())
