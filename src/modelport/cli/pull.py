"""``modelport pull REF -o DIR``: a version's files, verified, in a directory of one's own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelport.cli import render
from modelport.cli.options import JsonFlag
from modelport.cli.state import open_registry


def pull(
    ref: Annotated[str, typer.Argument(help="name, name@3 or name@alias.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write the files into.")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Copy a version's files into a directory, each verified against its manifest digest
    (from the server's registry with --remote)."""
    with open_registry() as registry:
        version = registry.pull(ref, output)
    if as_json:
        render.print_json(version.to_dict())
        return
    render.console().print(
        f"pulled [bold]{version.ref}[/bold] ({len(version.files)} file(s), "
        f"{render.human_size(version.size)}) into {output}"
    )
