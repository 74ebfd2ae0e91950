"""scikit-learn's bundled datasets as .npz files ready to push: no network, ever."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.errors import InvalidInput, MissingDependency

__all__ = ["BUILTINS", "Builtin", "write_builtin"]

_UCI = "CC-BY-4.0 (UCI Machine Learning Repository), the copy bundled with scikit-learn"
_SKLEARN = "as distributed with scikit-learn (BSD-3-Clause)"
BUILTINS = {
    "iris": ("load_iris", _UCI, "Iris plants: 4 measurements, 3 species"),
    "digits": (
        "load_digits",
        _UCI,
        "Handwritten digits: 8x8 images as 64 pixels (0-16), 10 classes",
    ),
    "wine": ("load_wine", _UCI, "Wine recognition: 13 chemical measurements, 3 cultivars"),
    "breast_cancer": (
        "load_breast_cancer",
        _UCI,
        "Breast cancer Wisconsin (diagnostic): 30 features, malignant (0) or benign (1)",
    ),
    "diabetes": ("load_diabetes", _SKLEARN, "Diabetes: 10 scaled features, disease progression"),
    "linnerud": (
        "load_linnerud",
        _SKLEARN,
        "Linnerud: 3 exercises, 3 physiological targets (label: Weight, Waist, Pulse)",
    ),
}


@dataclass(frozen=True, slots=True)
class Builtin:
    path: Path
    description: str
    license: str


def write_builtin(which: str, directory: Path) -> Builtin:
    """Write the bundled set ``which`` to ``directory/<which>.npz``: one array per feature
    (digits: ``pixels``, 64 per row), and ``label`` (linnerud: its three targets per row).

    Raises:
        InvalidInput: not one of ``BUILTINS``. MissingDependency: no scikit-learn.
    """
    if which not in BUILTINS:
        raise InvalidInput(f"no builtin dataset {which!r}; choose one of {', '.join(BUILTINS)}")
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise MissingDependency(
            "builtin datasets come from scikit-learn: pip install scikit-learn"
        ) from exc
    loader, license, description = BUILTINS[which]
    bunch = getattr(datasets, loader)()
    data, target = np.asarray(bunch.data), np.asarray(bunch.target)
    if which == "digits":
        arrays = {"pixels": data}
    else:
        arrays = {_column(str(f)): data[:, i] for i, f in enumerate(bunch.feature_names)}
    arrays["label"] = target
    path = directory / f"{which}.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return Builtin(path, description, license)


def _column(feature: str) -> str:
    """``'sepal length (cm)'`` -> ``'sepal_length_cm'``: a name that works as a column."""
    return re.sub(r"[^a-z0-9]+", "_", feature.lower()).strip("_")
