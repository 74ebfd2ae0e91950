"""Progress bars on stderr for the long steps (calibration, measurement).

Drawn only when stderr is a terminal: a log or a pipe gets the command's results, not
hundreds of redraws.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Advance", "progress_bar"]

Advance = Callable[[float], None]


@contextmanager
def progress_bar(description: str, total: float, *, enabled: bool = True) -> Iterator[Advance]:
    """A bar of ``total`` steps; the caller advances it by the steps done."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda steps: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps: bar.advance(task, steps)
