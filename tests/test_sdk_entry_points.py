"""``modelport.serve`` and ``modelport.convert``: the server and the conversion job, from Python."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport import Client, InvalidInput, NotFound
from tests.serving_fixtures import cli_env, free_port, push

SERVE = """
import sys, modelport
modelport.serve(*sys.argv[2:], http_port=int(sys.argv[1]), grpc_port=None)
"""


def test_serve_from_python_answers_a_client(home: Path, iris_onnx: Path) -> None:
    push(home, iris_onnx, "iris", "production")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port), "iris@production"],
        env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with Client(f"http://127.0.0.1:{port}", retries=0) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.server_ready():
                        break
                except modelport.Unavailable:
                    pass
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "not ready within 60 s"
                time.sleep(0.05)
            x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
            out = client.predict("iris", {"input": x}, outputs=["label"])
            assert out["label"].tolist() == [0]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output


def test_serve_refuses_an_unknown_option_and_model(home: Path, iris_onnx: Path) -> None:
    push(home, iris_onnx, "iris")
    with pytest.raises(InvalidInput, match="no_such_setting"):
        modelport.serve("iris", no_such_setting=1)
    with pytest.raises(NotFound, match="ghost"):
        modelport.serve("ghost", http_port=free_port(), grpc_port=None)


def test_convert_is_the_conversion_job(home: Path, tmp_path: Path) -> None:
    from tests.tabular_models import save_skops, sklearn_model

    path = save_skops(sklearn_model("iris_pipeline"), tmp_path / "lr.skops")
    with modelport.Registry() as registry:
        registry.push(path, "lr")
        report = modelport.convert(registry, "lr@1", to="onnx")
        assert report.version.ref == "lr@2" and report.version.format == "onnx"
        assert report.version.lineage is not None and report.version.lineage.parent == "lr@1"
        assert report.parity.passed
