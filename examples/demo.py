"""`make demo`: build a model, push it to a registry, and use it — the main job, end to end.

Runs the real `modelport` command so every step is one a user can type. The registry lives
in ./.demo (override with MODELPORT_HOME) so the demo never touches ~/.modelport.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "modelport")


def build_model(path: Path) -> None:
    features, labels = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), labels)
    model = convert_sklearn(
        classifier,
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        options={id(classifier): {"zipmap": False}},
    )
    path.write_bytes(model.SerializeToString())
    print(f"built {path} (scikit-learn LogisticRegression on iris, converted to ONNX)")


def step(*args: str) -> None:
    print(f"\n$ modelport {shlex.join(args)}", flush=True)
    subprocess.run([CLI, *args], check=True)


def main() -> None:
    home = Path(os.environ.setdefault("MODELPORT_HOME", str(ROOT / ".demo")))
    home.mkdir(parents=True, exist_ok=True)
    model = home / "iris.onnx"
    build_model(model)
    step("push", str(model), "--name", "iris", "--alias", "production", "--tag", "source=demo",
         "--description", "Iris classifier (demo)")  # fmt: skip
    step("ls")
    step("show", "iris@production")
    step(
        "predict",
        "iris@production",
        "--input",
        '{"float_input": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}',
    )
    step("verify", "iris@production")
    print(f"\nThe demo registry is in {home}. Explore it with:\n  export MODELPORT_HOME={home}")
    print(f"  {Path(CLI).relative_to(ROOT) if Path(CLI).is_relative_to(ROOT) else CLI} ls")


if __name__ == "__main__":
    main()
