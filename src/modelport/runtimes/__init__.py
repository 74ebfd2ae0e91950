"""Runtimes: one subpackage per framework family, found through a table by format name.

A runtime recognises, inspects and loads one format; its ``load`` returns a ``Predictor``,
which the table wraps in the one ``CheckedModel``. See ``docs/runtimes.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelport.runtimes.base import (
    LoadedModel,
    LoadOptions,
    ModelFiles,
    ModelInfo,
    Predictor,
    PushOptions,
    Runtime,
)
from modelport.runtimes.table import RuntimeTable, default_runtimes

if TYPE_CHECKING:
    from modelport.runtimes.checked import CheckedModel

__all__ = [
    "CheckedModel",
    "LoadOptions",
    "LoadedModel",
    "ModelFiles",
    "ModelInfo",
    "Predictor",
    "PushOptions",
    "Runtime",
    "RuntimeTable",
    "default_runtimes",
]


def __getattr__(name: str) -> Any:
    # The checked model needs numpy; importing it on first use keeps ``modelport`` (and the
    # CLI's start) free of numpy until a model is loaded.
    if name == "CheckedModel":
        from modelport.runtimes.checked import CheckedModel

        return CheckedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
