"""The server's edges under abuse (issue 9): bad repository names and versions, clients that
go away, wrong methods, compression bombs, slow or endless requests, too many connections and
a flood of gRPC calls. Real ``modelport serve`` processes, raw sockets and real clients.

The module's server serves ``iris@production`` (version 1 of two) and ``slow``.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from modelport import Registry, Settings
from modelport.errors import Conflict
from modelport.serving.config import ServeConfig
from modelport.serving.manager import ModelManager
from modelport.serving.metrics import ServingMetrics
from tests.onnx_models import make_iris_onnx, make_slow_model
from tests.serving_fixtures import CLI, Server, cli_env, push, running_server

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}]}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hardening")
    home = root / "home"
    iris = make_iris_onnx(root / "iris.onnx", zipmap=False)
    push(home, iris, "iris", "production")
    push(home, iris, "iris")
    push(home, make_slow_model(root / "slow.onnx"), "slow")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    with running_server(home, ["iris@production", "slow"]) as running:
        yield running
    assert running.proc.returncode == 0, running.output()


# -- helpers ---------------------------------------------------------------------------------


def _metric(server: Server, name: str, labels: str = "") -> float:
    """One sample of ``/metrics`` (0 when absent); ``labels`` as exposed, e.g. 'reason="x"'."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    selector = re.escape(f"{name}{{{labels}}}" if labels else name)
    match = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _wait_for_metric(server: Server, name: str, labels: str, value: float) -> float:
    deadline = time.monotonic() + 20
    seen = _metric(server, name, labels)
    while seen < value and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = _metric(server, name, labels)
    return seen


def _threads(server: Server) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def _answers_iris(server: Server) -> None:
    response = httpx.post(f"{server.http_url}/v2/models/iris/infer", json=IRIS, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"


def _connect(server: Server) -> socket.socket:
    host, port = server.http_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=20)


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (20 s at most)."""
    chunks = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError(f"connection still open after 20 s; got {b''.join(chunks)[:200]!r}")


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _json_error(raw: bytes, status: int) -> str:
    code, headers, body = _parse(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/json", headers
    message: str = json.loads(body)["error"]
    return message


# -- item 4: repository load/unload of a reference -------------------------------------------


def test_repository_calls_take_plain_names_and_change_nothing(server: Server) -> None:
    _answers_iris(server)
    threads = _threads(server)
    loaded = _metric(server, "modelport_models_loaded")
    index = httpx.post(f"{server.http_url}/v2/repository/index", timeout=10).json()
    for attempt in range(20):
        action = "load" if attempt % 4 else "unload"
        name = ("iris@2", "iris@1", "iris@production", "iris%3A2")[attempt % 4]
        url = f"{server.http_url}/v2/repository/models/{name}/{action}"
        response = httpx.post(url, timeout=30)
        assert response.status_code == 400, response.text
        assert "model name" in response.json()["error"], response.text
        _answers_iris(server)  # the served entry, pinned or not, would be loaded anew here
    assert httpx.post(f"{server.http_url}/v2/repository/index", timeout=10).json() == index
    assert _metric(server, "modelport_models_loaded") == loaded
    assert _metric(server, "modelport_model_unloads_total", 'reason="replaced"') == 0
    # Each leaked deployment kept its batcher's threads; a few may come and go on their own
    # (executor threads), 20 leaks would add dozens.
    assert _threads(server) <= threads + 2

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="iris@1")),
            (
                stub.RepositoryModelUnload,
                service_pb2.RepositoryModelUnloadRequest(model_name="iris@1"),
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=30)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _answers_iris(server)


def test_a_served_name_is_never_registered_twice(home: Path) -> None:
    async def register_twice() -> None:
        with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
            manager = ModelManager(registry, ServeConfig(), ServingMetrics())
            first = await manager.register("iris@production")
            with pytest.raises(Conflict, match="served already"):
                await manager.register("iris@2")
            assert manager.models["iris"] is first
            assert first.default == 1

    asyncio.run(register_twice())


# -- item 8: versions that str.isdigit() takes -----------------------------------------------

# '²' made int() fail (500); '١' (Arabic-Indic one) was read as version 1; 5,000 digits are
# past int()'s limit on digits (500); no version has more than 18 digits.
BAD_VERSIONS = ["%C2%B2", "%D9%A1", "9" * 5000, "1" * 30, "0", "-1"]
VERSION_ROUTES = [
    ("GET", "/v2/models/iris/versions/{v}", None),
    ("GET", "/v2/models/iris/versions/{v}/ready", None),
    ("GET", "/v2/models/iris/versions/{v}/config", None),
    ("POST", "/v2/models/iris/versions/{v}/infer", IRIS),
    ("GET", "/v1/models/iris/versions/{v}", None),
    ("GET", "/v1/models/iris/versions/{v}/metadata", None),
    ("POST", "/v1/models/iris/versions/{v}:predict", {"instances": [IRIS_ROW]}),
]


@pytest.mark.parametrize("version", BAD_VERSIONS)
@pytest.mark.parametrize(("method", "route", "body"), VERSION_ROUTES)
def test_bad_versions_are_400_on_every_route(
    server: Server, method: str, route: str, body: object, version: str
) -> None:
    url = server.http_url + route.format(v=version)
    response = httpx.request(method, url, json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert "model version must be a positive integer" in response.json()["error"]
    assert len(response.text) < 300  # the bad version is shown, shortened


@pytest.mark.parametrize("version", ["²", "١", "9" * 5000])
def test_bad_versions_are_invalid_argument_on_grpc(server: Server, version: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="iris", model_version=version)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.array([IRIS_ROW], np.float32).tobytes())
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            lambda: stub.ModelInfer(request, timeout=30),
            lambda: stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name="iris", version=version), timeout=30
            ),
            lambda: stub.ModelReady(
                service_pb2.ModelReadyRequest(name="iris", version=version), timeout=30
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "positive integer" in (caught.value.details() or "")


# -- item 11: clients that go away mid-body ---------------------------------------------------

HALF_BODIES = [
    ("POST /v2/models/iris/infer", "rest_v2"),
    ("POST /v1/models/iris:predict", "tfserving"),
    ("POST /v2/repository/index", "rest_v2"),
]


def test_clients_that_go_away_mid_body_are_counted_not_logged(server: Server) -> None:
    before = {
        protocol: _metric(server, "modelport_client_disconnects_total", f'protocol="{protocol}"')
        for protocol in ("rest_v2", "tfserving")
    }
    sent: Counter[str] = Counter()
    for client in range(20):
        request_line, protocol = HALF_BODIES[client % len(HALF_BODIES)]
        with _connect(server) as sock:
            sock.sendall(
                f"{request_line} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b'{"inputs": ['
            )
        sent[protocol] += 1
    for protocol, count in sent.items():
        labels = f'protocol="{protocol}"'
        seen = _wait_for_metric(
            server, "modelport_client_disconnects_total", labels, before[protocol] + count
        )
        assert seen == before[protocol] + count
    _answers_iris(server)
    log = server.output()
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log


# -- item 12a: every HTTP error is JSON -----------------------------------------------------

WRONG_METHODS = [
    ("GET", "/v2/models/iris/infer", 405, "POST"),
    ("PUT", "/v2/models/iris/versions/1/infer", 405, "POST"),
    ("DELETE", "/v2", 405, "GET"),
    ("POST", "/v2/health/live", 405, "GET"),
    ("GET", "/v2/repository/index", 405, "POST"),
    ("GET", "/v2/repository/models/iris/load", 405, "POST"),
    ("POST", "/metrics", 405, "GET"),
    ("PATCH", "/v2/models/iris", 405, "GET"),
    ("GET", "/no/such/thing", 404, None),
    ("POST", "/v2/models/iris/explain", 404, None),
]


@pytest.mark.parametrize(("method", "path", "status", "allowed"), WRONG_METHODS)
def test_routing_errors_are_json(
    server: Server, method: str, path: str, status: int, allowed: str | None
) -> None:
    response = httpx.request(method, server.http_url + path, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert path in message
    if allowed is not None:
        assert allowed in response.headers["allow"]
        assert allowed in message


def test_unexpected_failures_are_json_and_logged_once(server: Server) -> None:
    # Inputs the decoders did not expect (issue 9 item 8): whether the wire layer answers
    # them with a 400 or they escape as a 500, the client gets JSON and each 500 is logged
    # once with its traceback.
    deep = b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b', "pad": "' + b"x" * 70_000 + b'"}'
    header = b"\xb2"
    logged = "POST '/v2/models/iris/infer' failed\nTraceback"
    tracebacks = server.output().count(logged)
    answers = []
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(deep)
            + deep
        )
        answers.append(_read_until_closed(sock))
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Inference-Header-Content-Length: " + header + b"\r\nContent-Length: 2\r\n\r\n{}"
        )
        answers.append(_read_until_closed(sock))
    failures = 0
    for raw in answers:
        status = _parse(raw)[0]
        assert status in (400, 500), raw[:300]
        failures += status == 500
        _json_error(raw, status)
    log = server.output()
    assert log.count(logged) - tracebacks == failures, log  # once each, by us
    assert "Exception in ASGI application" not in log, log
    _answers_iris(server)


# -- compression bombs ---------------------------------------------------------------------


def _bomb(inflated: int) -> bytes:
    """A gzip body of ``inflated`` zero bytes (about a thousandth of that on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(2**20)
    return b"".join([*(packer.compress(zeros) for _ in range(inflated // 2**20)), packer.flush()])


def test_compression_bombs_inflate_off_the_event_loop(server: Server) -> None:
    body = _bomb(512 * 2**20)  # 0.5 MB that inflates past the 128 MiB limit
    bombs = []
    # Sixteen: well over the default thread pool's six threads on 2 cores, so off the loop
    # the last bombs wait for a thread and cannot all be answered before a small request,
    # even on a loaded machine. On the loop, every bomb sent first is answered first.
    for _ in range(16):
        sock = _connect(server)
        sock.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        bombs.append(sock)
    try:
        _answers_iris(server)
        readable, _, _ = select.select(bombs, [], [], 0)
        assert len(readable) < len(bombs), "every bomb was answered before a small request"
        for sock in bombs:
            message = _json_error(_read_until_closed(sock), 413)
            assert "decompressed request body is over" in message
    finally:
        for sock in bombs:
            sock.close()
    _answers_iris(server)


# -- connection limits: idle, slow heads and bodies, header size -----------------------------


@pytest.fixture(scope="module")
def strict(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("strict") / "serve.toml"
    config.write_text(
        "[server]\nhead_timeout = 0.5\nbody_timeout = 1.0\nkeep_alive_timeout = 1\n"
        'max_header_bytes = "4KiB"\n'
    )
    with running_server(home, ["iris@production"], ["--config", str(config)]) as running:
        yield running
    assert running.proc.returncode == 0, running.output()


def test_idle_connections_are_closed(strict: Server) -> None:
    fresh = _connect(strict)
    used = _connect(strict)
    used.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    with fresh, used:
        assert _read_until_closed(fresh) == b""
        assert _read_until_closed(used).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n",  # never finished
        b"GET /v2/health/live HTTP/1.1\r\nHost: x",
        b"G",
    ],
)
def test_a_request_head_that_never_ends_gets_408(strict: Server, head: bytes) -> None:
    with _connect(strict) as sock:
        sock.sendall(head)
        message = _json_error(_read_until_closed(sock), 408)
    assert "request head did not arrive" in message
    assert _metric(strict, "modelport_http_refused_total", 'reason="head_timeout"') >= 1


def test_a_head_dripped_line_by_line_gets_408(strict: Server) -> None:
    with _connect(strict) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        deadline = time.monotonic() + 20
        answer = b""
        while time.monotonic() < deadline:  # a header line every 0.1 s, forever
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                answer = _read_until_closed(sock)
                break
            try:
                sock.sendall(b"X-Drip: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                answer = _read_until_closed(sock)
                break
    assert "request head did not arrive" in _json_error(answer, 408)


def test_a_stalled_body_gets_408_and_a_slow_one_is_served(strict: Server) -> None:
    body = json.dumps(IRIS).encode()
    head = (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with _connect(strict) as sock:
        sock.sendall(head + body[:10])
        message = _json_error(_read_until_closed(sock), 408)
    assert "request body stalled" in message
    with _connect(strict) as sock:
        sock.sendall(head)
        for start in range(0, len(body), 5):  # slower in all than the timeout, never idle
            time.sleep(0.05)
            sock.sendall(body[start : start + 5])
        status, _, answer = _parse(_read_until_closed(sock))
    assert status == 200, answer
    assert _metric(strict, "modelport_http_refused_total", 'reason="body_timeout"') >= 1


@pytest.mark.parametrize("complete", [True, False])
def test_headers_over_the_limit_get_431(strict: Server, complete: bool) -> None:
    big = b"X-Big: " + b"a" * 8000 + (b"\r\n\r\n" if complete else b"")
    with _connect(strict) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + big)
        message = _json_error(_read_until_closed(sock), 431)
    assert "4096-byte limit" in message
    # Just under the limit is fine.
    fits = {"X-Fits": "a" * 3000}
    assert httpx.get(f"{strict.http_url}/v2/health/live", headers=fits).status_code == 200


@pytest.mark.parametrize(
    "request_head",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n{}",
    ],
)
def test_malformed_http_is_a_json_400_and_not_logged(strict: Server, request_head: bytes) -> None:
    with _connect(strict) as sock:
        sock.sendall(request_head)
        message = _json_error(_read_until_closed(sock), 400)
    assert "malformed HTTP request" in message
    assert "Invalid HTTP request" not in strict.output()


def test_connections_over_the_limit_get_503(home: Path, tmp_path: Path) -> None:
    with running_server(home, ["iris@production"], ["--max-connections", "4"]) as server:
        held = [_connect(server) for _ in range(4)]
        try:
            for sock in held:  # a whole request on each: the server has taken them all
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            with _connect(server) as extra:
                extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                raw = _read_until_closed(extra)
            message = _json_error(raw, 503)
            assert _parse(raw)[1]["retry-after"] == "1"
            assert "connections open" in message
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the server sees the four close
            if httpx.get(f"{server.http_url}/v2/health/live").status_code == 200:
                break
        _answers_iris(server)
        labels = 'reason="too_many_connections"'
        assert _metric(server, "modelport_http_refused_total", labels) == 1
    assert "Exceeded concurrency limit" not in server.output()


# -- request size settings -----------------------------------------------------------------


def test_json_bodies_have_their_own_limit(home: Path) -> None:
    with running_server(home, ["iris@production"], ["--max-json-size", "1KiB"]) as server:
        url = f"{server.http_url}/v1/models/iris:predict"
        fits = httpx.post(url, json={"instances": [IRIS_ROW]}, timeout=30)
        assert fits.status_code == 200, fits.text
        big = httpx.post(url, json={"instances": [IRIS_ROW] * 100}, timeout=30)
        assert big.status_code == 413, big.text
        assert "1024-byte limit" in big.json()["error"]
        # V2: a JSON body is held to the JSON limit; the same rows as binary data are not.
        v2 = f"{server.http_url}/v2/models/iris/infer"
        rows = np.array([IRIS_ROW] * 100, dtype=np.float32)
        tensor = {"name": "input", "datatype": "FP32", "shape": list(rows.shape)}
        as_json = httpx.post(v2, json={"inputs": [{**tensor, "data": rows.ravel().tolist()}]})
        assert as_json.status_code == 413, as_json.text
        assert "1024-byte limit" in as_json.json()["error"]
        raw = rows.tobytes()
        header = json.dumps(
            {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}
        ).encode()
        as_binary = httpx.post(
            v2,
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
            timeout=30,
        )
        assert as_binary.status_code == 200, as_binary.text


def test_size_flags_exist_and_bad_values_are_one_line(home: Path) -> None:
    import subprocess

    help_text = subprocess.run(
        [CLI, "serve", "--help"], env=cli_env(home), capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--max-request-size",
        "--max-json-size",
        "--grpc-max-message-size",
        "--max-connections",
        "--keep-alive-timeout",
    ):
        assert flag in help_text
    result = subprocess.run(
        [CLI, "serve", "iris", "--grpc-max-message-size", "4GiB"],
        env=cli_env(home), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --grpc-max-message-size: Input should be less than or equal to 2147483647"
    ]
    defaults = ServeConfig()
    assert defaults.max_request_bytes == 128 * 2**20
    assert defaults.json_limit() == 32 * 2**20
    assert defaults.grpc_max_message_bytes == 128 * 2**20


# -- gRPC overload ---------------------------------------------------------------------------


async def _flood(target: str, calls: int, deadline: float) -> Counter[str]:
    """``calls`` concurrent ModelInfer calls to ``slow`` over 4 channels; counts outcomes."""
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 512])
    request.raw_input_contents.append(np.ones((1, 512), np.float32).tobytes())
    options = [("grpc.use_local_subchannel_pool", 1)]  # four connections, not one shared
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(4)]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]

    async def call(index: int) -> str:
        try:
            await stubs[index % 4].ModelInfer(request, timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        return "OK"

    try:
        return Counter(await asyncio.gather(*(call(i) for i in range(calls))))
    finally:
        for channel in channels:
            await channel.close()


def test_grpc_overload_is_resource_exhausted(home: Path) -> None:
    # grpc core used to cancel 20-33% of such a flood before the server saw it (CANCELLED).
    # Whether this server's own limits are reached depends on how fast it drains the flood.
    limits = ["--max-concurrency", "32", "--max-queue-size", "16"]
    with running_server(home, ["slow"], limits) as server:
        outcomes = asyncio.run(_flood(server.grpc_target, 3000, deadline=15))
        assert outcomes["OK"] > 0, outcomes
        assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert httpx.get(f"{server.http_url}/v2/health/live", timeout=10).status_code == 200
