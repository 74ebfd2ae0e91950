"""``modelport.Client`` and ``AsyncClient`` against a real ``modelport serve``, over REST (binary
and JSON) and gRPC. One server per module serves:

- ``iris``: input ``input`` FP32 [-1, 4]; outputs ``label`` INT64, ``probabilities`` FP32;
- ``identity``: one Identity per datatype, FP16 and BYTES included (``INT8`` gives
  ``INT8_out``), [batch, 2];
- ``doubler``: version 1 gives ``y = x``, version 2 (the default) ``y = 2x``;
- ``spare``: an identity that the repository test unloads and loads again;
- ``slow``: 16 MatMuls of 512x512, for timeouts.

Servers that the tests stop or overload are their own.
"""

from __future__ import annotations

import asyncio
import re
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto

from modelport import AsyncClient, Client
from modelport.errors import InvalidInput, NotFound, Timeout, Unavailable
from modelport.types import DataType, TensorSpec
from tests.onnx_models import (
    make_identity_model,
    make_iris_onnx,
    make_matmul_model,
    make_slow_model,
)
from tests.serving_fixtures import (
    CLI,
    Server,
    cli_env,
    free_port,
    predict_in_process,
    push_all,
    running_server,
)

IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)

# Two rows of each datatype, edge values included (finite: JSON has no inf or NaN).
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
    "FP16": np.array([[0.5, -65504], [6e-8, 1.0]], np.float16),
    "FP32": np.array([[1.5, -3.25e38], [1e-45, 0.1]], np.float32),
    "FP64": np.array([[1e300, -1e-300], [0.1, -0.0]], np.float64),
    # ONNX strings are UTF-8, so BYTES stays within it (NUL included).
    "BYTES": np.array([[b"a", b""], [b"\x00nul", "ü €".encode()]], dtype=object),
}
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}  # fmt: skip

# How a test reaches the server: (URL kind, binary tensors on REST).
TRANSPORTS = {"rest": ("http", True), "rest-json": ("http", False), "grpc": ("grpc", True)}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with every model of this module pushed."""
    root = tmp_path_factory.mktemp("client")
    home = root / "home"
    eye = np.eye(2, dtype=np.float32)
    push_all(
        home,
        [
            (make_iris_onnx(root / "iris.onnx", zipmap=False), "iris", []),
            (make_identity_model(root / "identity.onnx", ONNX_TYPES), "identity", []),
            (make_identity_model(root / "spare.onnx", {"x": TensorProto.FLOAT}), "spare", []),
            (make_slow_model(root / "slow.onnx"), "slow", []),
        ],
    )
    # Versions 1 then 2 of one name: pushed one after the other.
    push_all(home, [(make_matmul_model(root / "one.onnx", eye), "doubler", [])])
    push_all(home, [(make_matmul_model(root / "two.onnx", 2 * eye), "doubler", [])])
    return home


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[Server]:
    with running_server(models, ["iris", "identity", "doubler", "spare", "slow"]) as srv:
        yield srv
    assert srv.proc.returncode == 0, f"exit {srv.proc.returncode} on SIGTERM:\n{srv.output()}"
    assert "Traceback" not in srv.output(), srv.output()


def url_of(server: Server, kind: str) -> str:
    return server.http_url if kind == "http" else f"grpc://{server.grpc_target}"


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> tuple[str, bool]:
    kind, binary = TRANSPORTS[request.param]
    return kind, binary


@pytest.fixture
def client(server: Server, transport: tuple[str, bool]) -> Iterator[Client]:
    with Client(url_of(server, transport[0])) as connection:
        yield connection


def counted(server: Server, outcome: str) -> float:
    """How many inference requests the server has answered with ``outcome``."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    pattern = rf'^modelport_requests_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def in_flight(server: Server) -> float:
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    found = re.search(r"^modelport_requests_in_flight (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# -- predict ------------------------------------------------------------------------------


def test_every_datatype_round_trips(client: Client, transport: tuple[str, bool]) -> None:
    outputs = client.predict("identity", DATA, binary=transport[1])
    assert sorted(outputs) == sorted(f"{name}_out" for name in DATA)
    for name, sent in DATA.items():
        got = outputs[f"{name}_out"]
        assert got.dtype == sent.dtype, name
        assert got.shape == sent.shape, name
        assert got.tolist() == sent.tolist(), name


def test_non_finite_floats_travel_binary(server: Server) -> None:
    special = np.array([[np.inf, -np.inf], [np.nan, 1.0]], np.float32)
    for url in (server.http_url, f"grpc://{server.grpc_target}"):
        with Client(url) as client:
            sent = DATA | {"FP32": special}
            got = client.predict("identity", sent, outputs=["FP32_out"])["FP32_out"]
        np.testing.assert_array_equal(got, special)


def test_str_arrays_are_sent_as_bytes(client: Client, transport: tuple[str, bool]) -> None:
    sent = DATA | {"BYTES": np.array([["a", "bc"], ["ü", ""]])}
    got = client.predict("identity", sent, outputs=["BYTES_out"], binary=transport[1])
    assert got["BYTES_out"].tolist() == [[b"a", b"bc"], ["ü".encode(), b""]]


def test_requested_outputs_and_versions(client: Client, transport: tuple[str, bool]) -> None:
    binary = transport[1]
    both = client.predict("iris", {"input": IRIS}, binary=binary)
    assert sorted(both) == ["label", "probabilities"]
    only = client.predict("iris", {"input": IRIS}, outputs=["label"], binary=binary)
    assert list(only) == ["label"]
    np.testing.assert_array_equal(only["label"], both["label"])

    x = np.array([[1.0, -2.0]], np.float32)
    np.testing.assert_array_equal(client.predict("doubler", {"x": x}, binary=binary)["y"], 2 * x)
    for version in (1, "1"):
        got = client.predict("doubler", {"x": x}, version=version, binary=binary)
        np.testing.assert_array_equal(got["y"], x)
    assert client.model_metadata("doubler", version=1).versions == ("1", "2")


def test_outputs_are_what_the_model_gives_in_process(client: Client, models: Path) -> None:
    expected = predict_in_process(models, "iris", {"input": IRIS})
    got = client.predict("iris", {"input": IRIS})
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-6)


# -- metadata, readiness, repository ------------------------------------------------------


def test_metadata_and_readiness(client: Client) -> None:
    assert client.server_live()
    assert client.server_ready()
    assert client.model_ready("iris")
    assert client.model_ready("iris", version=1)
    server = client.server_metadata()
    assert server.name == "modelport"
    assert "binary_tensor_data" in server.extensions

    iris = client.model_metadata("iris")
    assert iris.name == "iris" and iris.versions == ("1",)
    assert iris.platform == "onnxruntime_onnx"
    assert iris.signature.inputs == (TensorSpec("input", DataType.FP32, (-1, 4)),)
    assert [s.name for s in iris.outputs] == ["label", "probabilities"]

    served = {info.name: info for info in client.models()}
    assert {"iris", "identity", "doubler", "slow"} <= set(served)
    assert served["iris"].state == "READY"
    assert served["iris"].states == {"1": "READY"}
    assert served["iris"].inputs == iris.inputs
    assert served["identity"].inputs[0].datatype is DataType.BOOL


def test_unload_and_load(server: Server, transport: tuple[str, bool]) -> None:
    x = np.ones((1, 2), np.float32)
    with Client(url_of(server, transport[0]), retries=0) as client:
        client.unload("spare")
        try:
            assert not client.model_ready("spare")
            assert {i.name: i.state for i in client.models()}["spare"] == "UNAVAILABLE"
            with pytest.raises(Unavailable, match="unloaded"):
                client.predict("spare", {"x": x})
        finally:
            client.load("spare")
        assert client.model_ready("spare")
        np.testing.assert_array_equal(client.predict("spare", {"x": x})["x_out"], x)


def test_metrics_text(server: Server) -> None:
    with Client(server.http_url) as client:
        client.predict("iris", {"input": IRIS})
        text = client.metrics()
    assert 'modelport_requests_total{model="iris"' in text
    with Client(f"grpc://{server.grpc_target}") as client, pytest.raises(InvalidInput) as info:
        client.metrics()
    assert "HTTP only" in str(info.value)


# -- errors -------------------------------------------------------------------------------


def test_errors_are_raised_as_modelport_classes(
    client: Client, server: Server, transport: tuple[str, bool]
) -> None:
    binary = transport[1]
    with pytest.raises(NotFound, match="'nope' is not served"):
        client.predict("nope", {"input": IRIS}, binary=binary)
    with pytest.raises(NotFound):
        client.predict("iris", {"input": IRIS}, version=7, binary=binary)
    with pytest.raises(NotFound):
        client.model_metadata("nope")
    with pytest.raises(NotFound):
        client.model_ready("nope")
    with pytest.raises(InvalidInput, match="unknown output 'nope'"):
        client.predict("iris", {"input": IRIS}, outputs=["nope"], binary=binary)

    # A wrong datatype is refused once: never retried, whatever the retry budget.
    before = counted(server, "invalid_input")
    with pytest.raises(InvalidInput, match="expected datatype FP32, received INT32"):
        client.predict("iris", {"input": IRIS.astype(np.int32)}, binary=binary)
    if binary:  # JSON is typed by the signature: the values are FP32 then
        assert counted(server, "invalid_input") <= before + 1


def test_a_url_without_a_known_scheme_is_refused() -> None:
    for url in ("127.0.0.1:8000", "ftp://host", "http://"):
        with pytest.raises(InvalidInput, match="grpc://HOST:PORT"):
            Client(url)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_nothing_listening_is_unavailable(kind: str) -> None:
    url = f"{'http' if kind == 'http' else 'grpc'}://127.0.0.1:{free_port()}"
    with Client(url, retries=1, timeout=10) as client, pytest.raises(Unavailable) as info:
        client.server_live()
    assert "modelport serve" in str(info.value)


def test_timeout(server: Server, transport: tuple[str, bool]) -> None:
    rows = np.ones((512, 512), np.float32)  # ~4 GFLOP: far longer than the limit
    with Client(url_of(server, transport[0])) as client:
        with pytest.raises(Timeout):
            client.predict("slow", {"x": rows}, timeout=0.01, binary=transport[1])
        assert client.server_live()  # and the client goes on


# -- a server that stops, or refuses for a while ------------------------------------------


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_server_killed_mid_request(models: Path, kind: str) -> None:
    """kill -9 while requests are in flight: every caller gets Unavailable, none hangs."""
    rows = np.ones((1024, 512), np.float32)
    errors: list[BaseException] = []
    with running_server(models, ["slow"]) as srv, Client(url_of(srv, kind)) as client:

        def call() -> None:
            deadline = time.monotonic() + 60
            try:  # back to back until the server is gone: some are in flight when it dies
                while time.monotonic() < deadline:
                    client.predict("slow", {"x": rows})
                errors.append(AssertionError("the server answered for a minute after kill -9"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_for(lambda: in_flight(srv) >= 1, "a request in flight")
        srv.proc.kill()
        srv.proc.wait(30)
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a request hangs"
    assert len(errors) == 3
    for error in errors:
        assert isinstance(error, Unavailable), repr(error)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_overload_is_retried_until_it_passes(models: Path, kind: str) -> None:
    """With one request allowed in flight, another is refused (503 / RESOURCE_EXHAUSTED)
    while a long one runs; the client retries it until it passes."""
    long_rows = np.ones((2048, 512), np.float32)
    x = np.ones((1, 512), np.float32)
    with running_server(models, ["slow"], ["--max-concurrency", "1"]) as srv:

        def hold() -> None:
            # Long requests back to back until the server has refused one: the client's
            # first attempts are refused whatever the speed of the machine.
            deadline = time.monotonic() + 120
            with Client(srv.http_url) as client:
                while counted(srv, "unavailable") < 1 and time.monotonic() < deadline:
                    client.predict("slow", {"x": long_rows})

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            with Client(url_of(srv, kind), retries=50) as client:
                assert client.server_live()  # connected before the race below
                # A request may slip in between two long ones: then try again, until one
                # was refused first (the holder stops then) and passed by being retried.
                for _ in range(20):
                    wait_for(lambda: in_flight(srv) >= 1, "a long request in flight")
                    got = client.predict("slow", {"x": x})
                    np.testing.assert_array_equal(got["y"], x)
                    if counted(srv, "unavailable") >= 1:
                        break
            assert counted(srv, "unavailable") >= 1
        finally:
            holder.join(120)
        assert not holder.is_alive()


def test_a_connection_the_server_closed_while_idle_is_replaced(models: Path) -> None:
    """The server closes an idle keep-alive connection; the next request, sent on it first,
    passes on a new one (never an error: the server cannot have seen it)."""
    x = np.ones((1, 512), np.float32)
    with (
        running_server(models, ["slow"], ["--keep-alive-timeout", "1"]) as srv,
        Client(srv.http_url, retries=0) as client,
    ):
        client.predict("slow", {"x": x})
        [idle] = client._transport._pool._idle  # the pooled connection, to watch it close
        wait_for(lambda: bool(select.select([idle.sock], [], [], 0)[0]), "the server's close")
        np.testing.assert_array_equal(client.predict("slow", {"x": x})["y"], x)


# -- AsyncClient --------------------------------------------------------------------------


def test_async_client(server: Server, transport: tuple[str, bool]) -> None:
    kind, binary = transport

    async def main() -> None:
        async with AsyncClient(url_of(server, kind)) as client:
            assert await client.server_ready()
            assert await client.model_ready("iris")
            assert (await client.model_metadata("iris")).inputs[0].name == "input"
            assert "iris" in {info.name for info in await client.models()}
            outputs = await client.predict("identity", DATA, binary=binary)
            for name, sent in DATA.items():
                assert outputs[f"{name}_out"].tolist() == sent.tolist(), name
            rows = [IRIS[i : i + 1] for i in range(3)] * 11
            answers = await asyncio.gather(
                *(client.predict("iris", {"input": row}, binary=binary) for row in rows)
            )
            alone = await client.predict("iris", {"input": IRIS}, binary=binary)
            for index, answer in enumerate(answers):
                assert answer["label"][0] == alone["label"][index % 3]
            with pytest.raises(NotFound):
                await client.predict("nope", {"input": IRIS}, binary=binary)
            with pytest.raises(InvalidInput):
                await client.predict("iris", {"input": IRIS.astype(np.int64)}, binary=binary)
            with pytest.raises(Timeout):
                await client.predict(
                    "slow", {"x": np.ones((512, 512), np.float32)}, timeout=0.01, binary=binary
                )

    asyncio.run(main())


def test_async_client_unavailable_and_metrics(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.http_url) as client:
            assert "modelport_requests_total" in await client.metrics()
        for url in (f"http://127.0.0.1:{free_port()}", f"grpc://127.0.0.1:{free_port()}"):
            async with AsyncClient(url, retries=1) as client:
                with pytest.raises(Unavailable):
                    await client.server_live()

    asyncio.run(main())


# -- modelport predict --remote -----------------------------------------------------------


def test_cli_predict_remote(server: Server, models: Path) -> None:
    rows = '{"input": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
    local = cli(models, "predict", "iris", "--input", rows)
    assert local.returncode == 0, local.stderr
    for url in (server.http_url, f"grpc://{server.grpc_target}"):
        remote = cli(models, "predict", "iris", "--remote", url, "--input", rows)
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout == local.stdout
    only = cli(models, "predict", "iris@1", "--remote", server.http_url, "--input", rows,
               "--output-name", "label")  # fmt: skip
    assert only.returncode == 0, only.stderr
    assert "probabilities" not in only.stdout and "label" in only.stdout

    missing = cli(models, "predict", "nope", "--remote", server.http_url, "--input", rows)
    assert missing.returncode == 3, missing.stderr  # NotFound's exit code
    assert "not served" in missing.stderr
    wrong = cli(
        models, "predict", "iris", "--remote", server.http_url, "--input", '{"input": [["x"]]}'
    )
    assert wrong.returncode == 2, wrong.stderr  # InvalidInput's
    alias = cli(models, "predict", "iris@production", "--remote", server.http_url, "--input", rows)
    assert alias.returncode == 2 and "version" in alias.stderr, alias.stderr


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``modelport`` with ``home`` as its home, as a user runs it."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=120,
        env=cli_env(home, {"COLUMNS": "200"}), check=False,
    )  # fmt: skip
