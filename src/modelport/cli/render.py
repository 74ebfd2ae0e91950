"""How the CLI shows records: rich tables for people, JSON for programs.

Rich is imported only when a table is drawn, so ``--json`` calls start faster.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from modelport.registry import ModelSummary, ModelVersion
from modelport.registry.records import SERVING_KEY
from modelport.runtimes.derived import DerivedCheck

if TYPE_CHECKING:
    from rich.console import Console


def print_json(data: Any) -> None:
    sys.stdout.buffer.write(
        orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


def print_outputs(outputs: dict[str, Any]) -> None:
    """One line per output tensor: valid JSON that stays readable for long tensors."""
    lines = [
        f"  {orjson.dumps(name).decode()}: {orjson.dumps(value).decode()}"
        for name, value in outputs.items()
    ]
    sys.stdout.write("{\n" + ",\n".join(lines) + "\n}\n")
    sys.stdout.flush()


def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns on stdout.

    Plain text on purpose: rich takes about a second to lay out a thousand rows, and a
    registry listing is exactly the table that grows that long.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def models_table(models: Sequence[ModelSummary]) -> None:
    if not models:
        sys.stdout.write("no models yet; add one with `modelport push`\n")
        return
    rows = [
        (
            m.name,
            str(m.latest or "-"),
            str(m.versions),
            m.latest_format or "-",
            human_size(m.latest_size),
            ", ".join(f"{a}→{n}" for a, n in m.aliases.items()),
            when(m.updated_at),
        )
        for m in models
    ]
    table(("NAME", "LATEST", "VERSIONS", "FORMAT", "SIZE", "ALIASES", "UPDATED"), rows)


def versions_table(versions: Sequence[ModelVersion]) -> None:
    rows = [
        (
            str(v.version),
            v.format,
            human_size(v.size),
            ", ".join(v.aliases),
            ", ".join(f"{k}={val}" for k, val in v.tags.items()),
            when(v.created_at),
            f"{v.lineage.operation} from {v.lineage.parent}" if v.lineage.operation else "",
        )
        for v in versions
    ]
    table(("VERSION", "FORMAT", "SIZE", "ALIASES", "TAGS", "CREATED", "LINEAGE"), rows)


def version_detail(v: ModelVersion) -> None:
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]{v.ref}[/bold]  {v.format}, {human_size(v.size)}, created {when(v.created_at)}"
    )
    facts = {
        "description": v.description or "-",
        "aliases": ", ".join(v.aliases) or "-",
        "tags": ", ".join(f"{k}={val}" for k, val in v.tags.items()) or "-",
        "lineage": (
            f"{v.lineage.operation} from {v.lineage.parent or '(deleted)'} {v.lineage.parameters}"
            if v.lineage.operation
            else "-"
        ),
        "metrics": ", ".join(f"{k}={val}" for k, val in v.metrics.items() if k != "optimization")
        or "-",
        "trust pickle": "yes" if v.trust_pickle else "no",
        "runtime": ", ".join(f"{k}={val}" for k, val in v.metadata.items() if k != SERVING_KEY)
        or "-",
        "serving": ", ".join(f"{k}={val}" for k, val in v.serving_settings.items()) or "-",
    }
    for key, value in facts.items():
        out.print(f"  {key:<13}{value}", markup=False)
    if isinstance(v.metrics.get("optimization"), dict):
        from modelport.optimization.report import report_rows

        out.print("measured against the parent (optimize):", markup=False)
        table(*report_rows(v.metrics["optimization"]))
    signature = Table(
        "", "NAME", "DATATYPE", "SHAPE", box=None, title="signature", title_justify="left"
    )
    for kind, specs in (("input", v.signature.inputs), ("output", v.signature.outputs)):
        for spec in specs:
            signature.add_row(kind, spec.name, spec.datatype.value, spec.shape_text())
    out.print(signature)
    files = Table("PATH", "SIZE", box=None, title="files", title_justify="left")
    files.add_column("SHA256", overflow="fold", min_width=64)
    for f in v.files:
        files.add_row(
            f.path + (" (entry)" if f.path == v.entry else ""), human_size(f.size), f.digest
        )
    out.print(files)


def derived_checks(checks: Sequence[DerivedCheck]) -> None:
    """Under a version's ``verify`` line: each derived copy, and what was done about it."""
    lines = []
    for check in checks:
        if check.intact:
            lines.append(f"  derived copy {check.name}: ok")
            continue
        lines.append(
            f"  derived copy {check.name}: removed, to be built again from the stored files "
            "on the next load"
        )
        lines.extend(f"    {problem}" for problem in check.problems)
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
