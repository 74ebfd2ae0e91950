"""One request pipeline per transport, on a real ``modelport serve``: wrappers and
interceptors named in the serve config see every request, and every error is answered by
the wire contract (JSON ``{"error", "code"}``; gRPC status + ``modelport-error`` trailer).

A deterministic failure inside a model is a 500 / INTERNAL, never a 503 to retry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport._generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelport.errors import error_from_code
from tests.onnx_models import make_graph_model, make_iris_onnx, tensor
from tests.serving_fixtures import (
    CLI,
    Server,
    cli_env,
    free_port,
    push_all,
    running_server,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
ROW = [5.1, 3.5, 1.4, 0.2]
CONFIG = """
[server]
http_wrappers = ["tests.pipeline_probe:outer", "tests.pipeline_probe:inner"]
grpc_interceptors = ["tests.pipeline_probe:Recorder"]
"""


def make_failing_model(path: Path) -> Path:
    """Takes FP32 [-1, 4] like iris, and fails on every input: it reshapes 4 values to
    [3, 5]. onnxruntime reports FAIL, not INVALID_ARGUMENT: the model's fault."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, 5])
    return make_graph_model(
        path,
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [tensor("x", TensorProto.FLOAT, ["batch", 4])],
        [tensor("y", TensorProto.FLOAT, [3, 5])],
        initializers=[shape],
    )


def probe_env(log: Path) -> dict[str, str]:
    """The probe module importable by the server (tests/ is not installed) and its log."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "PIPELINE_PROBE_LOG": str(log)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("pipeline")
    home = tmp / "home"
    push_all(
        home,
        [
            (make_iris_onnx(tmp / "iris.onnx", zipmap=False), "iris", ()),
            (make_failing_model(tmp / "broken.onnx"), "broken", ()),
        ],
    )
    config = tmp / "serve.toml"
    config.write_text(CONFIG)
    return home, config, probe_env(tmp / "rpcs.log")


@pytest.fixture(scope="module")
def server(setup: tuple[Path, Path, dict[str, str]]) -> Iterator[Server]:
    home, config, env = setup
    with running_server(home, ["iris", "broken"], ["--config", str(config)], env=env) as running:
        yield running


def test_every_http_request_passes_the_wrappers_in_order(server: Server) -> None:
    base = server.http_url
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    json_infer = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    with httpx.Client(base_url=base, timeout=30) as client:
        answers = {
            "infer json": client.post("/v2/models/iris/infer", json=json_infer),
            "infer binary": client.post(
                "/v2/models/iris/infer",
                content=header + np.array([ROW], np.float32).tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
            ),
            "infer versioned": client.post("/v2/models/iris/versions/1/infer", json=json_infer),
            "tf serving": client.post("/v1/models/iris:predict", json={"instances": [ROW]}),
            "live": client.get("/v2/health/live"),
            "ready": client.get("/v2/health/ready"),
            "server metadata": client.get("/v2"),
            "model metadata": client.get("/v2/models/iris"),
            "metrics": client.get("/metrics"),
            "repository index": client.post("/v2/repository/index"),
            "no such endpoint": client.get("/nowhere"),
            "no such model": client.post("/v2/models/nope/infer", json=json_infer),
            "wrong method": client.get("/v2/models/iris/infer"),
        }
    for what, answer in answers.items():
        assert answer.headers.get_list("x-probe") == ["inner", "outer"], what
    assert answers["infer binary"].status_code == 200, answers["infer binary"].text
    assert answers["no such model"].status_code == 404


def test_what_a_wrapper_raises_is_answered_as_json(server: Server) -> None:
    refused = httpx.get(f"{server.http_url}/probe/unauthorized")
    assert refused.status_code == 401
    assert refused.json() == {
        "error": "probe: no key given; send one in the Authorization header",
        "code": "unauthorized",
    }
    crashed = httpx.get(f"{server.http_url}/probe/crash")
    assert crashed.status_code == 500
    assert crashed.headers["content-type"] == "application/json"
    assert crashed.json() == {"error": "internal error; see the server log", "code": "internal"}
    assert "Retry-After" not in crashed.headers
    # the traceback is logged once, by the server, never sent
    assert server.output().count("RuntimeError: probe crash") == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v2/models/nope/infer", {"inputs": []}, 404, "not_found"),
        ("GET", "/v2/models/nope", None, 404, "not_found"),
        ("POST", "/v2/models/iris/infer", {"inputs": "x"}, 400, "invalid_input"),
        ("POST", "/v1/models/iris:predict", {"instances": [["7"]]}, 400, "invalid_input"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("GET", "/v2/models/iris/infer", None, 405, "invalid_input"),
        (
            "POST",
            "/v2/models/broken/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]},
            500,
            "internal",
        ),
        ("POST", "/v1/models/broken:predict", {"instances": [ROW]}, 500, "internal"),
    ],
    ids=lambda value: value if isinstance(value, str) and "/" in value else None,
)
def test_http_errors_carry_their_code(
    server: Server, method: str, path: str, body: object, status: int, code: str
) -> None:
    answer = httpx.request(method, f"{server.http_url}{path}", json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["code"] == code
    assert error_from_code(code, "").http_status == status or status == 405
    # only a 503 asks to be retried; a model that fails deterministically is not one
    assert "Retry-After" not in answer.headers


def test_every_rpc_passes_the_interceptor_and_errors_carry_their_code(
    server: Server, setup: tuple[Path, Path, dict[str, str]]
) -> None:
    log = Path(setup[2]["PIPELINE_PROBE_LOG"])
    row, broken_row = (
        pb.ModelInferRequest.InferInputTensor(
            name=name,
            datatype="FP32",
            shape=[1, 4],
            contents=pb.InferTensorContents(fp32_contents=ROW),
        )
        for name in ("input", "x")
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="iris")).name == "iris"
        assert stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        answer = stub.ModelInfer(pb.ModelInferRequest(model_name="iris", inputs=[row]))
        assert answer.model_name == "iris"

        failures = {
            "not_found": (stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
            "invalid_input": (stub.ModelInfer, pb.ModelInferRequest(model_name="iris")),
            "internal": (
                stub.ModelInfer,
                pb.ModelInferRequest(model_name="broken", inputs=[broken_row]),
            ),
        }
        for code, (call, request) in failures.items():
            with pytest.raises(grpc.RpcError) as raised:
                call(request)
            error = raised.value
            assert dict(error.trailing_metadata())["modelport-error"] == code  # type: ignore[attr-defined]
            expected = error_from_code(code, "").grpc_status
            assert error.code().name == expected  # type: ignore[attr-defined]
    seen = set(log.read_text().split())
    service = "/inference.GRPCInferenceService/"
    assert {
        service + name
        for name in ("ServerLive", "ServerReady", "ModelMetadata", "RepositoryIndex", "ModelInfer")
    } <= seen


def test_worker_processes_load_the_wrappers_and_errors_cross_by_code(
    setup: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    home, config, env = setup
    with running_server(
        home, ["iris", "broken"], ["--config", str(config), "--workers", "2", "--no-grpc"], env=env
    ) as server:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        for _ in range(8):  # a fresh connection each: the kernel spreads them over workers
            with httpx.Client(timeout=30) as client:
                answer = client.post(f"{server.http_url}/v2/models/broken/infer", json=body)
            assert answer.status_code == 500
            assert answer.json()["code"] == "internal"
            assert answer.headers.get_list("x-probe") == ["inner", "outer"]

    # A worker's start-up error reaches the supervisor as its code: the CLI exits with the
    # same class's exit code and message as one process would.
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nhttp_wrappers = ["tests.pipeline_probe:missing"]\n')
    failed = subprocess.run(
        [CLI, "serve", "iris", "--config", str(bad), "--workers", "2",
         "--http-port", str(free_port()), "--no-grpc"],
        env=cli_env(home, env), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr == (
        "error: server.http_wrappers: 'tests.pipeline_probe' has no 'missing'\n"
    )


def test_a_config_path_that_is_not_an_import_path_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\ngrpc_interceptors = ["not a path"]\n')
    failed = subprocess.run(
        [CLI, "serve", "iris", "--config", str(bad)],
        env=cli_env(tmp_path / "home"), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert failed.returncode == 2
    assert "grpc_interceptors" in failed.stderr
    assert "'module:name'" in failed.stderr


SDK_SERVER = """
import sys
from pathlib import Path
from modelport import Registry, Settings
from modelport.serving.config import ServeConfig
from modelport.serving.server import run
from tests.pipeline_probe import Recorder, outer
registry = Registry(Settings(home=Path(sys.argv[1])))
config = ServeConfig(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]))
run(registry, config, ["iris"], wrappers=[outer], interceptors=[Recorder()])
"""


def test_wrappers_and_interceptors_given_to_run_in_python(
    setup: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    home, _, env = setup
    log = tmp_path / "rpcs.log"
    http_port, grpc_port = free_port(), free_port()
    output = tmp_path / "sdk.log"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", SDK_SERVER, str(home), str(http_port), str(grpc_port)],
            env=cli_env(home, {**env, "PIPELINE_PROBE_LOG": str(log)}),
            stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, output.read_text()
            try:
                return httpx.get(f"{base}/v2/health/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "the server ready")
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        answer = httpx.post(f"{base}/v2/models/iris/infer", json=body)
        assert answer.status_code == 200
        assert answer.headers.get_list("x-probe") == ["outer"]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert "/inference.GRPCInferenceService/ServerLive" in log.read_text().split()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, output.read_text()
