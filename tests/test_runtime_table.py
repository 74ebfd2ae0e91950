"""The runtime table: built-ins declared in order, read-only, and third-party formats that
serve from the CLI through the ``modelport.runtimes`` entry-point group."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest

from modelport import Conflict, UnsupportedFormat
from modelport.runtimes import RuntimeTable, default_runtimes
from modelport.runtimes.table import BUILTIN, ENTRY_POINT_GROUP
from tests.serving_fixtures import CLI, cli_env, running_server

FORMATS = [
    "mlflow", "huggingface_onnx", "onnx", "skops", "sklearn_pickle", "xgboost", "lightgbm",
    "torchscript", "torch_export", "keras", "tf_savedmodel", "caffe", "huggingface",
]  # fmt: skip


def test_the_default_table_lists_every_builtin_in_detection_order() -> None:
    table = default_runtimes()
    assert [name for name, _ in BUILTIN] == FORMATS
    assert list(table.entries)[: len(FORMATS)] == FORMATS
    assert table.get("onnx").format == "onnx"
    assert default_runtimes() is table  # built once per process


def test_the_default_table_is_read_only() -> None:
    table = default_runtimes()
    with pytest.raises(TypeError):
        table.entries["onnx"] = "elsewhere:Runtime"  # type: ignore[index]
    assert not hasattr(table, "register")


def test_two_runtimes_claiming_one_format_are_refused() -> None:
    with pytest.raises(Conflict, match=r"two runtimes claim format 'onnx': .*OnnxRuntime and x:Y"):
        RuntimeTable([*BUILTIN, ("onnx", "x:Y")])


def test_an_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(UnsupportedFormat, match=r"unknown format 'gguf'; supported formats: caffe"):
        default_runtimes().get("gguf")


# --- a third-party format, installed as a distribution with an entry point -------------------

ECHO_MODULE = '''
"""A third-party runtime: an ``.echo`` file holds a number; the model multiplies by it."""

from pathlib import Path

import numpy as np

from modelport.runtimes import LoadOptions, ModelFiles, ModelInfo, PushOptions
from modelport.types import DataType, Signature, TensorSpec

SIGNATURE = Signature(
    (TensorSpec("x", DataType.FP32, (-1, -1)),), (TensorSpec("y", DataType.FP32, (-1, -1)),)
)


class EchoPredictor:
    signature = SIGNATURE
    input_errors = (ValueError,)

    def __init__(self, scale):
        self.scale = scale

    def describe_error(self, error):
        return str(error)

    def run(self, inputs, outputs):
        return {"y": inputs["x"] * self.scale}

    def close(self):
        pass


class EchoRuntime:
    format = "echo"
    extra = ""

    def detect(self, path):
        return path.suffix == ".echo" and path.is_file()

    def inspect(self, path, options):
        float(path.read_text())
        return ModelInfo(ModelFiles(path.parent, path.name, (path.name,)), SIGNATURE)

    def load(self, path, options):
        return EchoPredictor(np.float32(float(path.read_text())))
'''


@pytest.fixture(scope="module")
def echo_distribution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that, on ``PYTHONPATH``, installs the ``echo`` format."""
    root = tmp_path_factory.mktemp("site")
    (root / "modelport_echo.py").write_text(textwrap.dedent(ECHO_MODULE))
    info = root / "modelport_echo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelport-echo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\necho = modelport_echo:EchoRuntime\n"
    )
    return root


def _with(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_a_third_party_format_pushes_and_serves_from_the_cli(
    home: Path, tmp_path: Path, echo_distribution: Path
) -> None:
    model = tmp_path / "triple.echo"
    model.write_text("3")
    env = _with(echo_distribution)

    pushed = subprocess.run(
        [CLI, "push", str(model), "--name", "triple"],
        env=cli_env(home, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr

    with running_server(home, ["triple"], env=env) as server:
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
        }
        response = httpx.post(f"{server.http_url}/v2/models/triple/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["name"] == "y" and output["data"] == [3, 6, 9, 12]

        wrong = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}
        refused = httpx.post(f"{server.http_url}/v2/models/triple/infer", json=wrong, timeout=30)
        assert refused.status_code == 400
        assert "unknown input 'z'" in refused.json()["error"]


def test_a_third_party_runtime_cannot_take_a_builtin_format(
    home: Path, tmp_path: Path, echo_distribution: Path
) -> None:
    site = tmp_path / "site"
    info = site / "modelport_onnx_clash-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnx-clash\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nonnx = modelport_echo:EchoRuntime\n"
    )
    model = tmp_path / "one.echo"
    model.write_text("1")
    env = {"PYTHONPATH": os.pathsep.join([str(site), _with(echo_distribution)["PYTHONPATH"]])}

    pushed = subprocess.run(
        [CLI, "push", str(model), "--name", "one"],
        env=cli_env(home, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert pushed.returncode != 0
    assert "two runtimes claim format 'onnx'" in pushed.stderr
