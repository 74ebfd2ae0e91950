"""Open Inference Protocol over gRPC against a real ``modelport serve``, with real clients.

``tritonclient.grpc`` is the client users have; typed ``contents`` (which tritonclient never
sends) go through plain grpcio with Triton's own message definitions, so both directions are
checked against the public wire format, not against our .proto. One server per module serves:

- ``iris@production``: input FP32 [-1, 4]; outputs ``label`` INT64, ``probabilities`` FP32;
- ``identity``: one Identity per datatype but FP16 (``INT8`` gives ``INT8_out``), [batch, 2];
- ``half``: the same for FP16 alone (FP16 has no typed field, so it cannot share a request);
- ``wide``: FP32 ``x`` [batch, 2] gives ``x_out``, for messages over grpcio's 4 MB default;
- ``spare``: a copy of ``wide`` that the repository test unloads and loads again.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from modelport.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidModel,
    InvalidName,
    ModelportError,
    NotFound,
    Overloaded,
    Timeout,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
)
from modelport.serving.config import ModelServeConfig
from modelport.serving.v2_grpc import status_of
from tests.onnx_models import make_identity_model, make_iris_onnx
from tests.serving_fixtures import (
    CLI,
    Server,
    cli_env,
    free_port,
    predict_in_process,
    push,
    push_all,
    running_server,
)

IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)

# Two rows of each datatype, edge values included.
DATA: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255], [1, 2]], np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1], [1, 2]], np.uint64),
    "INT8": np.array([[-128, 127], [0, -1]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1], [0, -1]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [0, -1]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [0, -1]], np.int64),
    "FP32": np.array([[1.5, -3.25e38], [np.inf, 1e-45]], np.float32),
    "FP64": np.array([[1e300, -1e-300], [-np.inf, 0.1]], np.float64),
    # ONNX strings are UTF-8, so BYTES stays within it (NUL included).
    "BYTES": np.array([[b"a", b""], [b"\x00nul", "ü €".encode()]], dtype=object),
}
HALF = np.array([[0.5, -65504], [np.inf, 6e-8]], np.float16)
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE, "BYTES": TensorProto.STRING,
}  # fmt: skip
# Where Triton's InferTensorContents keeps each datatype.
CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("grpc")
    home = root / "home"
    wide = make_identity_model(root / "wide.onnx", {"x": TensorProto.FLOAT})
    push_all(
        home,
        [
            (make_iris_onnx(root / "iris.onnx", zipmap=False), "iris", ["production"]),
            (make_identity_model(root / "identity.onnx", ONNX_TYPES), "identity", []),
            (make_identity_model(root / "half.onnx", {"FP16": TensorProto.FLOAT16}), "half", []),
            (wide, "wide", []),
            (wide, "spare", []),
        ],
    )
    with running_server(home, ["iris@production", "identity", "half", "wide", "spare"]) as srv:
        yield srv
    assert srv.proc.returncode == 0, f"exit {srv.proc.returncode} on SIGTERM:\n{srv.output()}"
    assert "Traceback" not in srv.output(), srv.output()


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.grpc_target) as connection:
        yield connection


@pytest.fixture
def stub(server: Server) -> Iterator[Any]:
    """Plain grpcio with Triton's message definitions."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def triton_input(name: str, array: np.ndarray[Any, Any]) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    item.set_data_from_numpy(array)
    return item


def expect_error(status: str, call: Callable[[], object]) -> str:
    """Run ``call``, which must fail with ``status``; return the error's message."""
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{status}", info.value.message()
    message: str = info.value.message()
    return message


def expect_rpc_error(status: grpc.StatusCode, call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    assert error.code() == status, error.details()
    details: str = error.details()
    return details


# -- the one error table --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidName("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (Conflict("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (Unavailable("model 'x' was unloaded"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("overloaded: 9 requests queued"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable("unloaded"), grpc.StatusCode.UNAVAILABLE),
        (UnsupportedFormat("x"), grpc.StatusCode.UNIMPLEMENTED),
        (Timeout("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
        (Forbidden("x"), grpc.StatusCode.PERMISSION_DENIED),
        (InvalidModel("x"), grpc.StatusCode.INTERNAL),
        (ModelportError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_maps_to_one_status(error: ModelportError, status: grpc.StatusCode) -> None:
    assert status_of(error) == status


# -- health and metadata --------------------------------------------------------------------


def test_server_live_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "modelport"
    assert "model_repository" in metadata["extensions"]


def test_model_ready_metadata_and_config(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    metadata = client.get_model_metadata("iris", as_json=True)
    assert metadata["name"] == "iris"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    config = client.get_model_config("iris", as_json=True)["config"]
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["-1", "4"]}]
    workers = ModelServeConfig().instance_count()  # one per core by default
    assert config["instance_group"] == [{"count": workers, "kind": "KIND_CPU"}]


# -- inference ------------------------------------------------------------------------------


def test_iris_matches_in_process_prediction(
    server: Server, client: triton.InferenceServerClient
) -> None:
    result = client.infer(
        "iris",
        [triton_input("input", IRIS_ROWS)],
        request_id="req-7",
        parameters={"trace": "on"},
    )
    expected = predict_in_process(server.home, "iris@production", {"input": IRIS_ROWS})
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"])
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", "iris", "1")
    assert not response.parameters  # request parameters are not echoed


def test_requested_outputs_only(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "iris",
        [triton_input("input", IRIS_ROWS)],
        outputs=[triton.InferRequestedOutput("probabilities")],
    )
    assert [o.name for o in result.get_response().outputs] == ["probabilities"]
    assert result.as_numpy("probabilities").shape == (3, 3)


def test_every_datatype_round_trips(client: triton.InferenceServerClient) -> None:
    result = client.infer("identity", [triton_input(name, data) for name, data in DATA.items()])
    for name, data in DATA.items():
        got = result.as_numpy(f"{name}_out")
        assert got.dtype == data.dtype, name
        np.testing.assert_array_equal(got, data, err_msg=name)
    half = client.infer("half", [triton_input("FP16", HALF)]).as_numpy("FP16_out")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, HALF)


def test_typed_contents_for_every_datatype(stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity", id="typed")
    for name, data in DATA.items():
        tensor = request.inputs.add(name=name, datatype=name, shape=data.shape)
        getattr(tensor.contents, CONTENTS[name]).extend(data.ravel().tolist())
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    result = triton.InferResult(response)
    for name, data in DATA.items():
        np.testing.assert_array_equal(result.as_numpy(f"{name}_out"), data, err_msg=name)


def _typed(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(
        name="FP16" if name == "half" else "x",
        datatype=datatype,
        shape=shape,
        contents=service_pb2.InferTensorContents(**contents),
    )
    return request


def _mixed() -> Any:
    request = _typed("wide", "FP32", [1, 2], fp32_contents=[1, 2])
    request.raw_input_contents.append(np.zeros(2, np.float32).tobytes())
    return request


def _raw(datatype: str, shape: list[int], raw: bytes) -> Any:
    request = service_pb2.ModelInferRequest(model_name="wide")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    ("request_message", "expected"),
    [
        pytest.param(
            _typed("half", "FP16", [1, 2], fp32_contents=[1, 2]),
            "send it in raw_input_contents",
            id="fp16-typed",
        ),
        pytest.param(
            _typed("wide", "FP32", [1, 2], fp64_contents=[1, 2]),
            "goes in fp32_contents",
            id="wrong-field",
        ),
        pytest.param(
            _typed("wide", "FP32", [1, 2], fp32_contents=[1, 2, 3]), "needs 2 elements", id="count"
        ),
        pytest.param(
            _typed("wide", "INT8", [1, 2], int_contents=[1, 300]),
            "outside the range of INT8",
            id="range",
        ),
        pytest.param(
            _typed("wide", "FP33", [1, 2], fp32_contents=[1, 2]),
            "unknown datatype 'FP33'",
            id="datatype",
        ),
        pytest.param(
            _typed("wide", "INT32", [1, 2], int_contents=[1, 2]),
            "expected datatype FP32",
            id="dtype",
        ),
        pytest.param(_mixed(), "send every input one way", id="mixed"),
        pytest.param(_raw("FP32", [1, 2], b"\x00" * 7), "needs 8 bytes, got 7", id="raw-size"),
        pytest.param(
            _raw("FP32", [1, 3], b"\x00" * 12),
            "expected shape [-1, 2], received [1, 3]",
            id="shape",
        ),
    ],
)
def test_malformed_tensors_are_invalid_argument(
    stub: Any, request_message: Any, expected: str
) -> None:
    details = expect_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.ModelInfer(request_message)
    )
    assert expected in details
    assert "input 'x'" in details or "input 'FP16'" in details


def test_message_over_4mb(client: triton.InferenceServerClient) -> None:
    big = np.arange(2_000_000, dtype=np.float32).reshape(1_000_000, 2)  # 8 MB each way
    result = client.infer("wide", [triton_input("x", big)])
    np.testing.assert_array_equal(result.as_numpy("x_out"), big)


# -- errors ---------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: triton.InferenceServerClient) -> None:
    rows = [triton_input("input", IRIS_ROWS)]
    assert "'irsi'" in expect_error("NOT_FOUND", lambda: client.infer("irsi", rows))
    assert "did you mean 'iris'" in expect_error(
        "NOT_FOUND", lambda: client.get_model_metadata("irsi")
    )
    expect_error("NOT_FOUND", lambda: client.is_model_ready("irsi"))
    expect_error("NOT_FOUND", lambda: client.infer("iris", rows, model_version="9"))
    expect_error("INVALID_ARGUMENT", lambda: client.infer("iris", rows, model_version="v1"))


def test_wrong_dtype_and_shape_name_the_tensor(client: triton.InferenceServerClient) -> None:
    as_ints = [triton_input("input", IRIS_ROWS.astype(np.int32))]
    message = expect_error("INVALID_ARGUMENT", lambda: client.infer("iris", as_ints))
    assert "'input'" in message
    assert "FP32" in message
    wrong_shape = [triton_input("input", IRIS_ROWS[:, :3].copy())]
    message = expect_error("INVALID_ARGUMENT", lambda: client.infer("iris", wrong_shape))
    assert "'input'" in message
    assert "[-1, 4]" in message
    unknown = [triton.InferRequestedOutput("scores")]
    message = expect_error(
        "INVALID_ARGUMENT",
        lambda: client.infer("iris", [triton_input("input", IRIS_ROWS)], outputs=unknown),
    )
    assert "'scores'" in message


# -- model repository -----------------------------------------------------------------------


def test_unload_then_load(client: triton.InferenceServerClient, stub: Any) -> None:
    rows = [triton_input("x", np.ones((1, 2), np.float32))]
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "spare", "version": "1", "state": "READY"} in index

    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    assert "load it" in expect_error("UNAVAILABLE", lambda: client.infer("spare", rows))
    ready_only = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert "spare" not in {m.name for m in ready_only.models}
    assert "iris" in {m.name for m in ready_only.models}

    client.load_model("spare")
    assert client.is_model_ready("spare")
    np.testing.assert_array_equal(client.infer("spare", rows).as_numpy("x_out"), np.ones((1, 2)))


def test_load_with_a_config_override_is_refused(client: triton.InferenceServerClient) -> None:
    message = expect_error("INVALID_ARGUMENT", lambda: client.load_model("spare", config="{}"))
    assert "config" in message
    assert client.is_model_ready("spare")


def test_our_stubs_work_next_to_tritonclient(server: Server) -> None:
    """Both define ``inference.*`` messages; ours live in their own descriptor pool."""
    from modelport._generated import grpc_predict_v2_pb2 as pb
    from modelport._generated import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        ours = pb_grpc.GRPCInferenceServiceStub(channel)
        assert ours.ServerLive(pb.ServerLiveRequest()).live
        request = pb.ModelInferRequest(model_name="wide")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
        tensor.contents.fp32_contents.extend([1.0, 2.0])
        response = ours.ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], "<f4")
    np.testing.assert_array_equal(out, [1.0, 2.0])


def test_message_limit_comes_from_the_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    push(home, make_identity_model(tmp_path / "wide.onnx", {"x": TensorProto.FLOAT}), "wide")
    config = tmp_path / "serve.toml"
    config.write_text("[server]\ngrpc_max_message_bytes = 1048576\n")
    with (
        running_server(home, ["wide"], ["--config", str(config)]) as small,
        triton.InferenceServerClient(small.grpc_target) as client,
    ):
        fits = np.zeros((100_000, 2), np.float32)  # 800 kB
        assert client.infer("wide", [triton_input("x", fits)]).as_numpy("x_out").shape
        too_big = [triton_input("x", np.zeros((200_000, 2), np.float32))]  # 1.6 MB
        expect_error("RESOURCE_EXHAUSTED", lambda: client.infer("wide", too_big))
    assert small.proc.returncode == 0, small.output()


def test_a_busy_grpc_port_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    push(home, make_identity_model(tmp_path / "wide.onnx", {"x": TensorProto.FLOAT}), "wide")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [CLI, "serve", "wide", "--http-port", str(free_port()), "--grpc-port", str(busy)],
            env=cli_env(home), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot listen for gRPC on 127.0.0.1:{busy}" in result.stdout + result.stderr
