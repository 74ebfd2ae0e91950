"""What a measurement depends on besides the model: library versions and CPU features."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["environment"]

# The instruction sets int8 and fp16 kernels are chosen by; the rest of /proc/cpuinfo's flags
# say nothing about how a quantized model runs.
_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "i8mm", "sve",
)  # fmt: skip


def environment(threads: int) -> dict[str, Any]:
    """Library versions, the CPU's model and relevant flags, and the threads measured with:
    recorded with every optimized version, since its speed is only true on such a machine."""
    model, flags = _cpu()
    return {
        "libraries": {name: _version(name) for name in ("onnx", "onnxruntime", "numpy")},
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_flags": [flag for flag in _FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "threads": threads,
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the flags are unknown, the versions still say much
        return "", set()
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags
