"""Runtimes: one module per model format, found through a table by format name."""

from __future__ import annotations

from functools import cache

from modelport.runtimes.base import (
    LoadedModel,
    LoadOptions,
    ModelFiles,
    ModelInfo,
    PushOptions,
    Runtime,
    RuntimeTable,
)

__all__ = [
    "LoadOptions",
    "LoadedModel",
    "ModelFiles",
    "ModelInfo",
    "PushOptions",
    "Runtime",
    "RuntimeTable",
    "default_runtimes",
]


def _onnx() -> Runtime:
    from modelport.runtimes.onnx import OnnxRuntime

    return OnnxRuntime()


@cache
def default_runtimes() -> RuntimeTable:
    """The table of built-in runtimes. Framework modules are imported on first use only."""
    table = RuntimeTable()
    table.register("onnx", _onnx)
    return table
