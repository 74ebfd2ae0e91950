"""Wire formats under hostile input (issue 9): each test sends what an attacker or a careless
client sent to a real ``modelport serve`` and checks the answer, then that the server serves.

Models (one server per module, plus one for the crash):

- ``iris``: FP32 ``input`` [-1, 4];
- ``floats`` / ``ints``: identity on ``x`` [batch, 2] of FP32 / INT32;
- ``text``: identity on BYTES ``x`` [n].
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from onnx import TensorProto
from tritonclient.grpc import service_pb2, service_pb2_grpc

from modelport.errors import InvalidInput
from modelport.protocols.v2.codec import array_from_raw
from modelport.types import DataType
from tests.onnx_models import make_identity_model, make_iris_onnx
from tests.serving_fixtures import CLI, Server, cli_env, push_all, running_server

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}]}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wire")
    models = root / "models"
    identity = {
        name: make_identity_model(models / f"{name}.onnx", {"x": elem_type})
        for name, elem_type in (
            ("floats", TensorProto.FLOAT),
            ("ints", TensorProto.INT32),
        )
    }
    text = make_identity_model(models / "text.onnx", {"x": TensorProto.STRING}, shape=("n",))
    home = root / "home"
    push_all(
        home,
        [
            (make_iris_onnx(models / "iris.onnx", zipmap=False), "iris", ()),
            *((path, name, ()) for name, path in identity.items()),
            (text, "text", ()),
        ],
    )
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    with running_server(home, ["iris", "floats", "ints", "text"], ["--cache-size", "0"]) as running:
        yield running


def _infer(server: Server, model: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.http_url}/v2/models/{model}/infer", timeout=60, **kwargs)


def _assert_serves(server: Server) -> None:
    assert server.proc.poll() is None, server.output()
    response = _infer(server, "iris", json=IRIS_BODY)
    assert response.status_code == 200, response.text


def _binary_request(name: str, datatype: str, shape: list[int], raw: bytes) -> dict[str, Any]:
    """A binary-extension request body (``content`` and ``headers`` for httpx)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return {
        "content": header + raw,
        "headers": {"Inference-Header-Content-Length": str(len(header))},
    }


# -- 1. a JSON array past simdjson's 24-bit count ------------------------------------------


def test_an_array_past_simdjsons_count_is_refused_and_the_server_lives(
    home: Path, tmp_path: Path
) -> None:
    """25 million values in one FP32 ``data`` array: 48 KB gzipped. simdjson's count
    saturates at 16,777,215 and the server died of the heap corruption; now a 413."""
    count = 25_000_000
    body = b"".join(
        [
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [%d, 4], "data": ['
            % (count // 4),
            b"1," * (count - 1),
            b"1]}]}",
        ]
    )
    packed = gzip.compress(body, compresslevel=9)
    assert len(packed) < 64 * 1024
    # With the default limits the inflated body is over the JSON limit: a 413 before any
    # parsing, and the server lives.
    with running_server(home, ["iris"]) as server:
        refused = _infer(server, "iris", content=packed, headers={"Content-Encoding": "gzip"})
        assert refused.status_code == 413, refused.text
        assert "decompressed request body is over" in refused.json()["error"]
        _assert_serves(server)
    # Limits above the inflated size, so that the parser meets the body.
    limits = ["--max-request-size", "256MiB", "--max-json-size", "256MiB"]
    with running_server(home, ["iris"], limits) as server:
        answers = []
        # Before the fix the server died (SIGSEGV) within the next few such requests.
        for content, headers in [(packed, {"Content-Encoding": "gzip"})] * 2 + [(body, {})]:
            answers.append(_infer(server, "iris", content=content, headers=headers))
            for _ in range(10):
                _assert_serves(server)
        for response in answers:
            assert response.status_code in (400, 413), response.text
            assert "at most 16777214 values" in response.json()["error"]
        assert server.proc.poll() is None, server.output()


# -- 5. BYTES judged by the declared datatype and shape before they are decoded -------------


def _empty_elements(count: int) -> bytes:
    return b"\x00\x00\x00\x00" * count


# A length prefix that runs past the data: decoding it first would say so.
BROKEN_BYTES = struct.pack("<I", 1000) + b"abc"


# (model, shape, raw data or a count of empty elements, message)
JUDGED_FIRST = [
    pytest.param("floats", [1, 2], BROKEN_BYTES, "expected datatype FP32, received BYTES"),
    pytest.param("floats", [2**21, 2], 2**22, "expected datatype FP32", id="16MiB"),
    pytest.param("text", [1, 2], BROKEN_BYTES, "expected shape [-1], received [1, 2]"),
    pytest.param("text", [2**40], BROKEN_BYTES, "needs 1099511627776 BYTES elements, at least"),
]


@pytest.mark.parametrize(("model", "shape", "raw", "message"), JUDGED_FIRST)
def test_bytes_are_judged_before_they_are_decoded_rest(
    server: Server, model: str, shape: list[int], raw: bytes | int, message: str
) -> None:
    if isinstance(raw, int):
        raw = _empty_elements(raw)
    response = _infer(server, model, **_binary_request("x", "BYTES", shape, raw))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    _assert_serves(server)


@pytest.mark.parametrize(("model", "shape", "raw", "message"), JUDGED_FIRST)
def test_bytes_are_judged_before_they_are_decoded_grpc(
    server: Server, model: str, shape: list[int], raw: bytes | int, message: str
) -> None:
    if isinstance(raw, int):
        raw = _empty_elements(raw)
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    with (
        grpc.insecure_channel(server.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(refused.value.details())
    _assert_serves(server)


def test_a_large_bytes_request_does_not_stall_other_clients(server: Server) -> None:
    """16 MiB of BYTES elements of mixed lengths (no shortcut: each is cut in turn) and three
    stray bytes at the end, which only decoding finds: decoded on the event loop, no other
    client was answered until it was refused. Now it is decoded off the loop."""
    pairs = 16 * 2**20 // 9
    raw = (b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00x") * pairs + b"\x00\x00\x00"
    request = _binary_request("x", "BYTES", [2 * pairs], raw)
    uploaded = threading.Event()

    def body() -> Iterator[bytes]:
        content = request["content"]
        for start in range(0, len(content), 2**20):
            yield content[start : start + 2**20]
        uploaded.set()  # httpx asks for more only once the last piece is sent

    answered_while_in_flight = 0
    outcome: dict[str, httpx.Response] = {}
    done = threading.Event()

    def send_large() -> None:
        try:
            outcome["large"] = _infer(server, "text", content=body(), headers=request["headers"])
        finally:
            done.set()

    sender = threading.Thread(target=send_large)
    sender.start()
    try:
        assert uploaded.wait(60), "the large request was never sent"
        with httpx.Client(timeout=60) as client:
            deadline = time.monotonic() + 120
            while not done.is_set() and time.monotonic() < deadline:
                response = client.post(f"{server.http_url}/v2/models/iris/infer", json=IRIS_BODY)
                assert response.status_code == 200, response.text
                if not done.is_set():
                    answered_while_in_flight += 1
    finally:
        sender.join(120)
    # On the loop, at most one small request could slip in between the refusal and the
    # client seeing it; off the loop, small requests are answered all along.
    assert answered_while_in_flight >= 3
    large = outcome["large"]
    assert large.status_code == 400, large.text
    assert "bytes of raw data are left after them" in large.json()["error"]
    _assert_serves(server)


def _elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@pytest.mark.parametrize(
    "items",
    [
        [b"a\x00\x00"] * 5,  # one length: cut by numpy, trailing NULs kept
        [b""] * 7,
        [b"ab", b"", b"\x00", b"xyz"],  # lengths differ: one by one
        [b"only one"],
        [],
    ],
)
def test_bytes_elements_decode_exactly(items: list[bytes]) -> None:
    array = array_from_raw("x", DataType.BYTES, (len(items),), _elements(*items))
    assert array.dtype == object
    assert array.tolist() == items


@pytest.mark.parametrize(
    ("shape", "raw", "message"),
    [
        ((3,), _elements(b"a", b"b"), "needs 3 BYTES elements, at least 12 bytes"),
        ((2,), _elements(b"a", b"b") + b"\x00", "1 bytes of raw data are left after them"),
        ((2,), _elements(b"a") + b"\x09\x00\x00\x00ab", "of 9 bytes runs past the data"),
        ((2,), _elements(b"abcdefgh") + b"\x00\x00", "raw data has 1"),
    ],
)
def test_bytes_elements_that_do_not_fit_the_shape_are_refused(
    shape: tuple[int, ...], raw: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        array_from_raw("x", DataType.BYTES, shape, raw)


# -- 6. one rule for JSON values on every edge ----------------------------------------------

BAD_VALUES = [
    pytest.param("ints", 1.5, "expected whole numbers for datatype INT32", id="fraction-int32"),
    pytest.param("ints", True, "non-numeric JSON (true)", id="true-int32"),
    pytest.param("ints", 2**31, "outside the range of INT32", id="range-int32"),
    pytest.param("floats", "7", "non-numeric JSON (the string '7')", id="string-fp32"),
    pytest.param("floats", True, "non-numeric JSON (true)", id="true-fp32"),
    pytest.param("floats", None, "non-numeric JSON (null)", id="null-fp32"),
    pytest.param("floats", "nan", "non-numeric JSON (the string 'nan')", id="nan-fp32"),
    pytest.param("floats", 1e39, "outside the range of FP32", id="inf-fp32"),
]
DATATYPES = {"ints": "INT32", "floats": "FP32"}


def _v2(model: str, bad: Any, rows: int) -> dict[str, Any]:
    data: list[Any] = [1] * (2 * rows)
    data[rows] = bad  # in the middle: a large body's fast path meets good values first
    return {
        "inputs": [{"name": "x", "shape": [rows, 2], "datatype": DATATYPES[model], "data": data}]
    }


@pytest.mark.parametrize(("model", "bad", "message"), BAD_VALUES)
@pytest.mark.parametrize("edge", ["v2-small", "v2-large", "tf-instances", "tf-inputs"])
def test_a_json_value_that_would_change_is_refused_on_every_edge(
    server: Server, edge: str, model: str, bad: Any, message: str
) -> None:
    if edge.startswith("v2"):
        body = _v2(model, bad, rows=1 if edge == "v2-small" else 20_000)
        content = json.dumps(body).encode()
        assert (len(content) >= 64 * 1024) == (edge == "v2-large")  # v2_json.LARGE_BODY
        response = _infer(server, model, content=content)
    else:
        key = "instances" if edge == "tf-instances" else "inputs"
        response = httpx.post(
            f"{server.http_url}/v1/models/{model}:predict", json={key: [[1, bad]]}, timeout=60
        )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(("model", "bad", "message"), BAD_VALUES)
def test_a_json_value_that_would_change_is_refused_by_predict(
    home: Path, model: str, bad: Any, message: str
) -> None:
    result = subprocess.run(
        [CLI, "predict", model, "--input", json.dumps({"x": [[1, bad]]})],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_good_json_values_still_pass_on_every_edge(server: Server) -> None:
    """Whole floats for integers and integers for floats keep their values."""
    for model, row, expected in (("ints", [1.0, -2], [1, -2]), ("floats", [1, 2.5], [1.0, 2.5])):
        for rows in (1, 20_000):
            body = {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [rows, 2],
                        "datatype": DATATYPES[model],
                        "data": row * rows,
                    }
                ]
            }
            response = _infer(server, model, json=body)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"][:2] == expected
        response = httpx.post(
            f"{server.http_url}/v1/models/{model}:predict", json={"instances": [row]}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == [expected]


# -- 8. parsing errors are a JSON 400, not a 500 -------------------------------------------


def test_a_header_length_int_refuses_is_a_400(server: Server) -> None:
    response = _infer(
        server,
        "iris",
        content=json.dumps(IRIS_BODY).encode(),
        headers={"Inference-Header-Content-Length": b"\xb2"},  # '²': isdigit() says yes
    )
    assert response.status_code == 400, response.text
    assert "is not a length within" in response.json()["error"]
    _assert_serves(server)


def test_json_nested_past_simdjsons_depth_is_a_400(server: Server) -> None:
    deep = b"[" * 1100 + b"]" * 1100
    content = b'{"pad": "%s", "inputs": %s}' % (b"x" * 70_000, deep)  # a large body
    response = _infer(server, "iris", content=content)
    assert response.status_code == 400, response.text
    assert "not valid JSON" in response.json()["error"]
    small = _infer(server, "iris", content=b'{"inputs": %s}' % deep)
    assert small.status_code == 400, small.text
    assert "not valid JSON" in small.json()["error"]
    _assert_serves(server)


def _nested(depth: int, leaf: bytes) -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        (
            "/v2/models/text/infer",
            b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": %s}]}'
            % _nested(40, b'"a"'),
            "lists nested deeper than 32 levels",
        ),
        (
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": %s, "data": [1]}]}'
            % json.dumps([1] * 70).encode(),
            "shape has 70 dimensions; at most 32",
        ),
        (
            "/v1/models/text:predict",  # deeper than Python recurses
            b'{"instances": %s}' % _nested(1000, b'{"b64": "YQ=="}'),
            "lists nested deeper than 32 levels",
        ),
        (
            "/v1/models/floats:predict",
            b'{"instances": %s}' % _nested(100, b"1.0"),
            "lists nested deeper than 32 levels",
        ),
    ],
    ids=["v2-data", "v2-shape", "tf-b64", "tf-numbers"],
)
def test_deep_tensors_are_a_400(server: Server, path: str, content: bytes, message: str) -> None:
    response = httpx.post(f"{server.http_url}{path}", content=content, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    _assert_serves(server)


def test_a_grpc_shape_of_too_many_dimensions_is_invalid_argument(server: Server) -> None:
    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP32", shape=[1] * 70)
    request.raw_input_contents.append(b"\x00" * 4)
    with (
        grpc.insecure_channel(server.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 32" in str(refused.value.details())


# -- echo bounds: the id bounded, parameters not echoed -------------------------------------


def test_rest_echoes_a_bounded_id_and_no_parameters(server: Server) -> None:
    parameters = {"trace": "x" * 100_000, "nested": {"a": [1] * 1000}}
    response = _infer(server, "iris", json={**IRIS_BODY, "id": "r" * 256, "parameters": parameters})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["id"] == "r" * 256
    assert "parameters" not in document
    assert len(response.content) < 1000
    for bad in ("r" * 257, 42, ["a"], None):
        refused = _infer(server, "iris", json={**IRIS_BODY, "id": bad})
        assert refused.status_code == 400, refused.text
        assert "request 'id' must be a string of at most 256 characters" in refused.json()["error"]
    refused = _infer(server, "iris", json={**IRIS_BODY, "parameters": ["timeout"]})
    assert refused.status_code == 400, refused.text
    assert "'parameters' must be a JSON object" in refused.json()["error"]


def test_grpc_echoes_a_bounded_id_and_no_parameters(server: Server) -> None:
    def request(request_id: str) -> Any:
        message = service_pb2.ModelInferRequest(model_name="iris", id=request_id)
        message.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        message.raw_input_contents.append(np.array(IRIS_ROW, np.float32).tobytes())
        message.parameters["trace"].string_param = "x" * 100_000
        return message

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request("r" * 256), timeout=60)
        assert response.id == "r" * 256
        assert not response.parameters
        assert response.ByteSize() < 1000
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request("r" * 257), timeout=60)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256 characters" in str(refused.value.details())
