"""`modelport serve` over Open Inference Protocol REST, driven by httpx and tritonclient.http."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from onnx import TensorProto

from tests.onnx_models import iris_data, make_identity_model, make_iris_onnx, make_slow_model
from tests.serving_fixtures import Server, predict_in_process, push, running_server

DTYPES = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),
}


def _sample(datatype: str, rows: int = 2) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[f"héllo {i}".encode(), b"\x00bin"] for i in range(rows)], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False]] * rows)
    return (np.arange(rows * 2).reshape(rows, 2) + 1).astype(DTYPES[datatype][1])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    home = root / "home"
    models = root / "models"
    iris = make_iris_onnx(models / "iris.onnx", zipmap=False)
    push(home, iris, "iris", "production")
    push(home, iris, "iris")
    push(
        home,
        make_identity_model(models / "dtypes.onnx", {f"x_{d}": t for d, (t, _) in DTYPES.items()}),
        "dtypes",
    )
    push(home, make_slow_model(models / "slow.onnx"), "slow")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    with running_server(
        home, ["iris@production", "dtypes", "slow"], ["--cache-size", "0"]
    ) as running:
        yield running
    assert running.proc.returncode == 0, running.output()


def _infer(server: Server, model: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.http_url}/v2/models/{model}/infer", json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def _still_serving(server: Server) -> None:
    assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
    x = iris_data()[0][:1]
    response = _infer(
        server,
        "iris",
        {
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        },
    )
    assert response.status_code == 200, response.text


def test_health_and_metadata(server: Server) -> None:
    base = server.http_url
    meta = httpx.get(f"{base}/v2").json()
    assert meta["name"] == "modelport"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    model = httpx.get(f"{base}/v2/models/iris").json()
    assert model["name"] == "iris"
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    assert httpx.get(f"{base}/v2/models/iris/versions/1").json()["name"] == "iris"
    assert httpx.get(f"{base}/v2/models/iris/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/iris/versions/1/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/iris/versions/2/ready").status_code == 400  # not loaded
    assert httpx.get(f"{base}/v2/models/nope").status_code == 404


def test_json_infer_matches_in_process(server: Server, home: Path) -> None:
    x = iris_data()[0][:5]
    expected = predict_in_process(home, "iris@production", {"input": x})
    body = {
        "id": "req-42",
        "parameters": {"trace": "abc"},
        "inputs": [{"name": "input", "shape": [5, 4], "datatype": "FP32", "data": x.tolist()}],
    }
    response = _infer(server, "iris", body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "req-42"
    assert "parameters" not in doc  # request parameters are not echoed
    assert (doc["model_name"], doc["model_version"]) == ("iris", "1")
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["label"]["datatype"] == "INT64"
    assert outputs["label"]["data"] == expected["label"].tolist()
    probabilities = np.array(outputs["probabilities"]["data"], np.float32).reshape(
        outputs["probabilities"]["shape"]
    )
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-6)
    # flat data, a version in the path, and one requested output
    flat = {
        "inputs": [
            {"name": "input", "shape": [5, 4], "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        "outputs": [{"name": "label"}],
    }
    doc = httpx.post(
        f"{server.http_url}/v2/models/iris/versions/2/infer", json=flat, timeout=30
    ).json()
    assert doc["model_version"] == "2"
    assert [o["name"] for o in doc["outputs"]] == ["label"]
    assert doc["outputs"][0]["data"] == expected["label"].tolist()


def test_large_json_bodies_decode_exactly(server: Server) -> None:
    # Over 64 KiB, JSON float data is decoded by simdjson straight into numpy: the slow
    # model is x @ I @ I ..., so every float must come back exactly as sent.
    x = np.random.default_rng(7).standard_normal((64, 512)).astype(np.float32)
    for data in (x.ravel().tolist(), x.tolist()):  # flat, and nested
        body = {"inputs": [{"name": "x", "shape": [64, 512], "datatype": "FP32", "data": data}]}
        response = _infer(server, "slow", body)
        assert response.status_code == 200, response.text
        y = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(64, 512)
        np.testing.assert_array_equal(y, x)
    short = {"inputs": [{"name": "x", "shape": [64, 512], "datatype": "FP32",
                         "data": x.ravel().tolist()[:-1]}]}  # fmt: skip
    refused = _infer(server, "slow", short)
    assert refused.status_code == 400
    assert "needs 32768 elements, data has 32767" in refused.json()["error"]
    _still_serving(server)


@pytest.mark.parametrize("datatype", list(DTYPES))
@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_through_tritonclient(server: Server, datatype: str, binary: bool) -> None:
    if datatype == "BYTES" and not binary:
        data = np.array(
            [[b"hello", b"world"], [b"a", b"b"]], dtype=object
        )  # JSON carries text only
    else:
        data = _sample(datatype)
    client = triton.InferenceServerClient(server.http_url.removeprefix("http://"))
    tensor = triton.InferInput(f"x_{datatype}", list(data.shape), datatype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    others = []
    for other in DTYPES:
        if other != datatype:
            extra = triton.InferInput(f"x_{other}", [2, 2], other)
            extra.set_data_from_numpy(_sample(other), binary_data=True)
            others.append(extra)
    wanted = [triton.InferRequestedOutput(f"x_{datatype}_out", binary_data=binary)]
    result = client.infer("dtypes", [tensor, *others], outputs=wanted, request_id="r1")
    got = result.as_numpy(f"x_{datatype}_out")
    assert got.shape == data.shape
    if datatype == "BYTES":
        # JSON carries BYTES as text, and tritonclient hands text back as str
        as_bytes = [
            [v if isinstance(v, bytes) else v.encode() for v in row] for row in got.tolist()
        ]
        assert as_bytes == data.tolist()
    else:
        np.testing.assert_array_equal(got, data)
        assert got.dtype == data.dtype
    assert result.get_response()["id"] == "r1"


def test_tritonclient_metadata_and_repository(server: Server) -> None:
    client = triton.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.get_model_metadata("iris")["inputs"][0]["name"] == "input"
    index = client.get_model_repository_index()
    assert {"name": "iris", "version": "1", "state": "READY", "reason": ""} in index


def test_binary_request_by_hand(server: Server, home: Path) -> None:
    x = iris_data()[0][:3]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "label"},
            ],
        }
    ).encode()
    response = httpx.post(
        f"{server.http_url}/v2/models/iris/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    doc = json.loads(response.content[:length])
    outputs = {o["name"]: o for o in doc["outputs"]}
    size = outputs["probabilities"]["parameters"]["binary_data_size"]
    probabilities = np.frombuffer(response.content[length : length + size], np.float32).reshape(
        3, 3
    )
    expected = predict_in_process(home, "iris@production", {"input": x})
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-6)
    assert outputs["label"]["data"] == expected["label"].tolist()


def test_gzip_request_body(server: Server) -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
            ]
        }
    )
    response = httpx.post(
        f"{server.http_url}/v2/models/iris/infer",
        content=gzip.compress(body.encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text


IRIS_INPUT = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "must be a JSON object"),
        (json.dumps({"inputs": []}).encode(), {}, 400, "no 'inputs'"),
        (
            json.dumps({"inputs": [{**IRIS_INPUT, "datatype": "FLOAT32"}]}).encode(),
            {},
            400,
            "unknown datatype 'FLOAT32'",
        ),
        (
            json.dumps({"inputs": [{**IRIS_INPUT, "datatype": "FP64"}]}).encode(),
            {},
            400,
            "expected datatype FP32, received FP64",
        ),
        (
            json.dumps({"inputs": [{**IRIS_INPUT, "shape": [2, 4]}]}).encode(),
            {},
            400,
            "needs 8 elements, data has 4",
        ),
        (
            json.dumps({"inputs": [{**IRIS_INPUT, "shape": [1, -4]}]}).encode(),
            {},
            400,
            "non-negative integers",
        ),
        (
            json.dumps({"inputs": [{**IRIS_INPUT, "data": ["a", "b", "c", "d"]}]}).encode(),
            {},
            400,
            "expected numbers for datatype FP32",
        ),
        (
            json.dumps({"inputs": [{**IRIS_INPUT, "name": "nope"}]}).encode(),
            {},
            400,
            "unknown input 'nope'",
        ),
        (
            json.dumps({"inputs": [IRIS_INPUT], "outputs": [{"name": "nope"}]}).encode(),
            {},
            400,
            "unknown output 'nope'",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]}
            ).encode(),
            {},
            400,
            "neither 'data' nor binary_data_size",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 4],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 10**12},
                        }
                    ]
                }
            ).encode(),
            {"Inference-Header-Content-Length": "0"},
            400,
            "",
        ),
        (b"{}", {"Inference-Header-Content-Length": "999"}, 400, "not a length within"),
    ],
)
def test_malformed_requests_get_400_and_the_server_keeps_serving(
    server: Server, content: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    if headers.get("Inference-Header-Content-Length") == "0":
        headers = {"Inference-Header-Content-Length": str(len(content))}
        message = "runs past the 0 bytes of binary data"
    response = httpx.post(
        f"{server.http_url}/v2/models/iris/infer", content=content, headers=headers
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    _still_serving(server)


def test_unknown_model_and_version(server: Server) -> None:
    body = {"inputs": [IRIS_INPUT]}
    unknown = _infer(server, "irsi", body)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "model 'irsi' is not served here; did you mean 'iris'?"
    missing = httpx.post(f"{server.http_url}/v2/models/iris/versions/9/infer", json=body)
    assert missing.status_code == 404
    assert "has no version 9" in missing.json()["error"]
    assert (
        httpx.post(f"{server.http_url}/v2/models/iris/versions/x/infer", json=body).status_code
        == 400
    )
    assert httpx.get(f"{server.http_url}/v2/nope").status_code == 404
    _still_serving(server)


def test_concurrent_requests_batch_and_each_gets_its_own_rows(server: Server, home: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 512)).astype(np.float32) for i in range(48)]

    def send(x: np.ndarray) -> np.ndarray:
        body = {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
        doc = _infer(server, "slow", body).json()
        return np.array(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])

    results: dict[int, np.ndarray] = {}

    def worker(indices: range) -> None:
        for i in indices:
            results[i] = send(inputs[i])

    threads = [threading.Thread(target=worker, args=(range(k, 48, 16),)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for i, x in enumerate(inputs):
        expected = (
            predict_in_process(home, "slow", {"x": x})["y"] if i < 3 else x
        )  # identity weights
        np.testing.assert_allclose(results[i], expected, rtol=1e-5, atol=1e-5)
    metrics = httpx.get(f"{server.http_url}/metrics").text
    batched = _histogram_above_one(metrics, "modelport_batch_size", 'model="slow"')
    assert batched > 0, "no batch above 1 under concurrent load"


def _histogram_above_one(metrics: str, name: str, selector: str) -> float:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket") and selector in line:
            bound = line.split('le="')[1].split('"')[0]
            counts[bound] = float(line.rsplit(" ", 1)[1])
    return counts["+Inf"] - counts["1.0"]


def test_metrics_exposition(server: Server) -> None:
    _still_serving(server)
    text = httpx.get(f"{server.http_url}/metrics").text
    for series in (
        'modelport_requests_total{model="iris",outcome="success",protocol="rest_v2",version="1"}',
        "modelport_request_duration_seconds_bucket",
        "modelport_queue_duration_seconds_bucket",
        "modelport_compute_duration_seconds_bucket",
        "modelport_batch_size_bucket",
        "modelport_queue_depth",
        "modelport_model_load_seconds",
        "modelport_model_memory_bytes",
        "modelport_models_loaded",
        "process_resident_memory_bytes",
    ):
        assert series in text, series
