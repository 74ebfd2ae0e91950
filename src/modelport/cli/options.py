"""Options several commands share, spelled once so their flags and help stay alike."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["AliasOption", "JsonFlag", "NameOption"]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NameOption = Annotated[
    str | None, typer.Option("--name", "-n", help="Store under this model; default: REF's.")
]
AliasOption = Annotated[
    list[str] | None, typer.Option("--alias", "-a", help="Point this alias at the new version.")
]
