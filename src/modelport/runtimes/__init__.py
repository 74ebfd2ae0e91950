"""Runtimes: one subpackage per framework family, found through a table by format name.

A runtime recognises, inspects and loads one format; its ``load`` returns a ``Predictor``,
which the table wraps in the one ``CheckedModel``. See ``docs/runtimes.md``.
"""

from __future__ import annotations

from modelport.runtimes.base import (
    LoadedModel,
    LoadOptions,
    ModelFiles,
    ModelInfo,
    PushOptions,
    Runtime,
)
from modelport.runtimes.checked import CheckedModel, Predictor
from modelport.runtimes.table import RuntimeTable, default_runtimes

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
