"""Small PyTorch networks written by hand, and the ways PyTorch saves them, for tests.

Weights come from a fixed seed, so a network built twice computes the same function::

    module = small_cnn()
    path = save_scripted(module, tmp / "cnn.pt")
    expected = run(module, image)  # numpy in, numpy out, as the served model should give

TorchScript is deprecated in torch 2.13 and ``torch.jit.script``/``trace``/``save`` warn on
every call; the helpers silence exactly those DeprecationWarnings, since pytest turns
warnings into errors and the tests use TorchScript on purpose.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DictHeads",
    "TwoInputs",
    "mlp",
    "run",
    "save_exported",
    "save_legacy_pickle",
    "save_pickled",
    "save_scripted",
    "save_state_dict",
    "save_traced",
    "small_cnn",
]


def small_cnn(channels: int = 1, size: int = 28, classes: int = 10, seed: int = 0) -> nn.Module:
    """Conv → ReLU → pool → linear on ``channels`` x ``size`` x ``size`` images, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (size // 2) ** 2, classes),
    ).eval()


def mlp(features: int = 8, hidden: int = 16, classes: int = 3, seed: int = 1) -> nn.Module:
    """Two linear layers with a ReLU between, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)).eval()


class TwoInputs(nn.Module):
    """``forward(features, bias) -> (scores, total)``: two inputs, a tuple of two outputs."""

    def __init__(self, features: int = 4, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.linear = nn.Linear(features, classes)

    def forward(
        self, features: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.linear(features) + bias
        return scores, features.sum(dim=1)


class DictHeads(nn.Module):
    """``forward(x) -> {"logits": ..., "embedding": ...}``: outputs named by a dict."""

    def __init__(self, features: int = 6) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Linear(features, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = torch.tanh(self.embed(x))
        return {"logits": self.head(embedding), "embedding": embedding}


def run(module: nn.Module, *inputs: np.ndarray[Any, Any]) -> Any:
    """What ``module`` computes on numpy ``inputs``: numpy arrays in the module's structure."""
    with torch.inference_mode():
        result = module(*(torch.from_numpy(np.array(array)) for array in inputs))
    if isinstance(result, torch.Tensor):
        return result.numpy()
    if isinstance(result, dict):
        return {key: value.numpy() for key, value in result.items()}
    return tuple(value.numpy() for value in result)


@contextlib.contextmanager
def _torchscript_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


def save_scripted(module: nn.Module, path: Path) -> Path:
    """``torch.jit.save(torch.jit.script(module), path)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _torchscript_deprecations():
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def save_traced(module: nn.Module, example: Sequence[np.ndarray[Any, Any]], path: Path) -> Path:
    """``torch.jit.save(torch.jit.trace(module, example), path)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = tuple(torch.from_numpy(np.array(array)) for array in example)
    with _torchscript_deprecations():
        torch.jit.save(torch.jit.trace(module, tensors), str(path))
    return path


def save_exported(
    module: nn.Module,
    example: Sequence[np.ndarray[Any, Any]],
    path: Path,
    *,
    dynamic_batch: bool = True,
) -> Path:
    """``torch.export.save(torch.export.export(module, example), path)``.

    With ``dynamic_batch``, the first dimension of every input is one ``Dim("batch")``
    (the example needs at least 2 rows: export specialises sizes 0 and 1).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = tuple(torch.from_numpy(np.array(array)) for array in example)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in tensors)
    program = torch.export.export(module, tensors, dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path))
    return path


def save_pickled(module: nn.Module, path: Path) -> Path:
    """``torch.save(module, path)``: the whole module, pickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module, str(path))
    return path


def save_state_dict(module: nn.Module, path: Path) -> Path:
    """``torch.save(module.state_dict(), path)``: weights without an architecture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), str(path))
    return path


def save_legacy_pickle(module: nn.Module, path: Path) -> Path:
    """A state_dict in the pre-1.6 format: a bare pickle stream, not a zip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), str(path), _use_new_zipfile_serialization=False)
    return path
