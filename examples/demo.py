"""`make demo`: build a model, push it to a registry, and use it — the main job, end to end.

Runs the real `modelport` command so every step is one a user can type. The registry lives
in ./.demo (override with MODELPORT_HOME) so the demo never touches ~/.modelport.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
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
    serve(home)


CURL = (
    "curl -s -X POST http://127.0.0.1:{port}/v2/models/iris/infer "
    "-H 'Content-Type: application/json' "
    """-d '{{"inputs": [{{"name": "float_input", "shape": [1, 4], "datatype": "FP32", """
    """"data": [5.1, 3.5, 1.4, 0.2]}}]}}'"""
)


def serve(home: Path) -> None:
    """The main job, a running server: check it answers, print a curl line, serve until Ctrl-C."""
    port = int(os.environ.get("DEMO_PORT", "8000"))
    args = ["serve", "iris@production", "--http-port", str(port), "--grpc-port", str(port + 1)]
    print(f"\n$ modelport {shlex.join(args)}", flush=True)
    server = subprocess.Popen([CLI, *args])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the server did not start; see its message above")
                time.sleep(0.1)
        curl = CURL.format(port=port)
        answer = subprocess.run(
            ["bash", "-c", curl], capture_output=True, text=True, check=True
        ).stdout
        print(f"\nThe server is up. Try it (answer: {answer.strip()}):\n\n  {curl}\n")
        print(f"tritonclient.http works on :{port}, tritonclient.grpc on :{port + 1}.")
        print("Press Ctrl-C to stop.", flush=True)
        server.wait()
    except KeyboardInterrupt:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
