"""``modelport dataset ...``: push, builtin, split, ls, show, verify, rm, alias."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelport.cli import render
from modelport.cli.options import AliasOption, JsonFlag
from modelport.cli.state import open_registry
from modelport.config import load_settings
from modelport.errors import VerificationFailed
from modelport.registry import Registry

if TYPE_CHECKING:
    # numpy and the datasets package load only when a dataset command runs.
    from modelport.datasets.records import DatasetVersion

app = typer.Typer(
    name="dataset",
    help="Versioned datasets: push, builtin, split, ls, show, verify, rm, alias.",
    no_args_is_help=True,
)

RefArgument = Annotated[str, typer.Argument(help="name, name@2, name@alias (name@2:train).")]


def _registry() -> Registry:
    return Registry(load_settings())


_browse = open_registry  # the commands that also run against a server's registry (--remote)


@app.command()
def push(
    path: Annotated[
        Path, typer.Argument(help=".npz, .npy, .csv, .parquet, .jsonl, or an image folder.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    label: Annotated[
        str | None, typer.Option("--label", help="The label column (default: label, else y).")
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    license_text: Annotated[str, typer.Option("--license", help="The data's license.")] = "",
    alias: AliasOption = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="key=value; repeatable.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Store a data file (or an image folder, one subfolder per class) as the next version
    of NAME: hashed, profiled and checked as it streams."""
    with _browse() as registry:
        version = registry.datasets.push(
            path, name, label=label, description=description, license=license_text,
            aliases=alias or [], tags=tag or [],
        )  # fmt: skip
    _pushed(version, as_json)


@app.command()
def builtin(
    which: Annotated[
        str,
        typer.Argument(help="iris, digits, wine, breast_cancer, diabetes or linnerud."),
    ],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Dataset name (default: the set's).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Store one of scikit-learn's bundled datasets (no network), label column `label`."""
    with _browse() as registry:
        version = registry.datasets.builtin(which, name=name)
    _pushed(version, as_json)


@app.command()
def split(
    ref: RefArgument,
    train: Annotated[float, typer.Option("--train", help="Fraction of rows for train.")] = 0.0,
    val: Annotated[float, typer.Option("--val", help="Fraction of rows for val.")] = 0.0,
    test: Annotated[float, typer.Option("--test", help="Fraction of rows for test.")] = 0.0,
    stratify: Annotated[
        str | None, typer.Option("--stratify", help="Keep this column's balance in each split.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same split.")] = 0,
    alias: AliasOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Store a new version of REF's data with named splits (fractions must add up to 1)."""
    fractions = {"train": train, "val": val, "test": test}
    with _browse() as registry:
        version = registry.datasets.split(
            ref, fractions, seed=seed, stratify=stratify, aliases=alias or []
        )
    if as_json:
        render.print_json(version.to_dict())
        return
    parts = ", ".join(f"{name} {rows}" for name, rows in version.splits.items())
    render.console().print(
        f"split {version.derived_from} → [bold]{version.ref}[/bold] ({parts} rows, "
        f"{version.split_method['method']}, seed {seed})"
    )


@app.command("ls")
def list_datasets(
    name: Annotated[str | None, typer.Argument(help="List this dataset's versions.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List datasets, or the versions of one dataset."""
    with _browse() as registry:
        if name is not None:
            versions = registry.datasets.versions(name)
            if as_json:
                render.print_json([v.to_dict() for v in versions])
                return
            render.table(
                ("VERSION", "ROWS", "SPLITS", "SIZE", "ALIASES", "CREATED", "LINEAGE"),
                [
                    (
                        str(v.version), str(v.rows),
                        ", ".join(f"{s} {n}" for s, n in v.splits.items()) or "-",
                        render.human_size(v.size), ", ".join(v.aliases),
                        render.when(v.created_at),
                        f"{v.operation} from {v.derived_from}" if v.operation else "",
                    )
                    for v in versions
                ],
            )  # fmt: skip
            return
        datasets = registry.datasets.list()
    if as_json:
        render.print_json([d.to_dict() for d in datasets])
        return
    if not datasets:
        typer.echo("no datasets yet; add one with `modelport dataset push` or `dataset builtin`")
        return
    render.table(
        ("NAME", "LATEST", "VERSIONS", "ROWS", "FORMAT", "SIZE", "ALIASES", "UPDATED"),
        [
            (
                d.name, str(d.latest or "-"), str(d.versions), str(d.rows or "-"),
                d.format or "-", render.human_size(d.size),
                ", ".join(f"{a}→{n}" for a, n in d.aliases.items()), render.when(d.updated_at),
            )
            for d in datasets
        ],
    )  # fmt: skip


@app.command()
def show(ref: RefArgument, as_json: JsonFlag = False) -> None:
    """Show a version: schema, splits and rows, profile summary, lineage, files."""
    with _browse() as registry:
        version = registry.datasets.get(ref)
    if as_json:
        render.print_json(version.to_dict())
        return
    out = render.console()
    out.print(
        f"[bold]{version.ref}[/bold]  {version.format}, {version.rows} rows, "
        f"{render.human_size(version.size)}, created {render.when(version.created_at)}"
    )
    facts = {
        "sha256": version.digest,
        "description": version.description or "-",
        "label": version.label or "-",
        "splits": ", ".join(f"{s} {n}" for s, n in version.splits.items()) or "-",
        "split method": _method(version.split_method),
        "source": version.source or "-",
        "license": version.license or "-",
        "aliases": ", ".join(version.aliases) or "-",
        "tags": ", ".join(f"{k}={v}" for k, v in version.tags.items()) or "-",
        "lineage": (
            f"{version.operation} from {version.derived_from or '(deleted)'}"
            if version.operation
            else "-"
        ),
    }
    for key, value in facts.items():
        out.print(f"  {key:<13}{value}", markup=False)
    render.table(
        ("COLUMN", "DATATYPE", "SHAPE", "MISSING", "MIN", "MEAN", "MAX", "STD", "TOP VALUES"),
        [_profile_row(c.to_dict(), version.profile.get(c.name, {})) for c in version.columns],
    )


def _method(method: dict[str, Any]) -> str:
    if not method:
        return "-"
    fractions = ", ".join(f"{k} {v:g}" for k, v in method["fractions"].items())
    by = f", stratified by {method['stratify']}" if method.get("stratify") else ""
    return f"{method['method']} ({fractions}), seed {method['seed']}{by}"


def _profile_row(column: dict[str, Any], stats: dict[str, Any]) -> tuple[str, ...]:
    def number(key: str) -> str:
        return f"{stats[key]:.4g}" if key in stats else "-"

    top = list(stats.get("categories", {}).items())[:3]
    return (
        column["name"],
        column["datatype"],
        "[" + ", ".join(map(str, column["shape"])) + "]",
        f"{stats.get('missing_rate', 0.0):.1%}",
        number("min"),
        number("mean"),
        number("max"),
        number("std"),
        ", ".join(f"{k}×{v}" for k, v in top) or "-",
    )


@app.command()
def verify(ref: RefArgument) -> None:
    """Re-hash every stored file of a version; exit non-zero on any mismatch."""
    with _browse() as registry:
        version = registry.datasets.get(ref)
        problems = registry.datasets.verify(version.ref)
    render.console().print(f"{version.ref}: {'DAMAGED' if problems else 'ok'}")
    for problem in problems:
        render.console().print(f"  {problem}", markup=False)
    if problems:
        raise VerificationFailed(f"{version.ref} failed verification")


@app.command("rm")
def remove(
    ref: Annotated[str, typer.Argument(help="name@2 or name@alias.")],
    force: Annotated[
        bool, typer.Option("--force", help="Delete even if an alias points at it.")
    ] = False,
) -> None:
    """Delete a dataset version (its files go once nothing else references them)."""
    with _browse() as registry:
        version = registry.datasets.delete(ref, force=force)
    render.console().print(f"removed {version.ref}")


@app.command()
def alias(ref: RefArgument, alias_name: Annotated[str, typer.Argument(metavar="ALIAS")]) -> None:
    """Point ALIAS at a dataset version."""
    with _browse() as registry:
        version = registry.datasets.set_alias(ref, alias_name)
    render.console().print(f"{version.name}@{alias_name} → {version.ref}")


def _pushed(version: DatasetVersion, as_json: bool) -> None:
    if as_json:
        render.print_json(version.to_dict())
        return
    columns = len(version.columns)
    render.console().print(
        f"pushed [bold]{version.ref}[/bold] ({version.format}, {version.rows} rows, "
        f"{columns} column(s), {render.human_size(version.size)}, label "
        f"{version.label or '-'}, sha256 {version.digest[:12]}…)"
    )
