"""TLS and mTLS on both ports of a real ``modelport serve``, with certificates made here
(``tls_certs``), through httpx, grpcio, tritonclient and ``modelport.Client``.

Two servers per module serve ``iris`` (input ``input`` FP32 [-1, 4]):

- ``tls``: ``--tls-cert/--tls-key`` given as flags;
- ``mtls``: the same plus ``tls_client_ca`` from a TOML config, and ``tests.key_probe``,
  which refuses any request but health checks without ``Bearer <KEY>`` (to see that clients
  send their ``api_key``).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelport import AsyncClient, Client, Settings
from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport._generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelport.client.api import api_session
from modelport.client.tls import ClientTls
from modelport.errors import InvalidInput, Unauthorized, Unavailable
from tests.onnx_models import make_iris_onnx
from tests.serving_fixtures import CLI, Server, cli_env, free_port, predict_in_process, push
from tests.tls_certs import TlsFiles, running_tls_server

ROOT = Path(__file__).resolve().parent.parent
IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
KEY = "mp_0123456789ab_" + "k" * 43


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls")
    home = root / "home"
    push(home, make_iris_onnx(root / "iris.onnx", zipmap=False), "iris")
    return home


@pytest.fixture(scope="module")
def expected(models: Path) -> dict[str, Any]:
    return predict_in_process(models, "iris", {"input": IRIS})


def probe_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "TLS_PROBE_KEY": KEY}


def checked_exit(server: Server) -> None:
    """The server drained cleanly, and no client's failed handshake reached its log."""
    output = server.output()
    assert server.proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert "andshake" not in output, output  # grpc core logs each failed one at INFO


@pytest.fixture(scope="module")
def tls(models: Path, tls_files: TlsFiles) -> Iterator[Server]:
    with running_tls_server(models, ["iris"], tls_files) as server:
        yield server
    checked_exit(server)


@pytest.fixture(scope="module")
def mtls(models: Path, tls_files: TlsFiles) -> Iterator[Server]:
    config = models.parent / "mtls.toml"
    config.write_text(
        "[server]\n"
        f"tls_cert = '{tls_files.cert}'\n"
        f"tls_key = '{tls_files.key}'\n"
        f"tls_client_ca = '{tls_files.ca}'\n"
        "http_wrappers = ['tests.key_probe:require_key']\n"
        "grpc_interceptors = ['tests.key_probe:RequireKey']\n"
    )
    with running_tls_server(
        models, ["iris"], tls_files, ["--config", str(config)], tls_flags=False, mtls=True,
        env=probe_env(),
    ) as server:  # fmt: skip
        yield server
    checked_exit(server)


def mtls_kwargs(files: TlsFiles) -> dict[str, Any]:
    return {"tls_ca": files.ca, "client_cert": files.client_cert, "client_key": files.client_key}


def grpc_live(target: str, credentials: grpc.ChannelCredentials, **options: Any) -> bool:
    with grpc.secure_channel(target, credentials, list(options.items())) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live)


# -- the TLS server -----------------------------------------------------------------------


def test_start_up_line_says_https_and_tls(tls: Server, mtls: Server) -> None:
    assert f"REST on {tls.http_url}, gRPC (TLS) on {tls.grpc_target}" in tls.output()
    assert "client certificates required" not in tls.output()
    assert f"REST on {mtls.http_url}" in mtls.output()
    assert "client certificates required" in mtls.output()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_httpx_verifies_the_server(tls: Server, tls_files: TlsFiles, host: str) -> None:
    url = tls.http_url.replace("127.0.0.1", host)
    response = httpx.get(f"{url}/v2/models/iris", verify=tls_files.context(), timeout=10)
    assert response.status_code == 200
    assert response.json()["name"] == "iris"


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_client_predicts_over_tls(
    tls: Server, tls_files: TlsFiles, expected: dict[str, Any], scheme: str
) -> None:
    url = tls.http_url if scheme == "https" else f"grpcs://{tls.grpc_target}"
    with Client(url, tls_ca=tls_files.ca) as client:
        outputs = client.predict("iris", {"input": IRIS})
        assert client.model_ready("iris")
    np.testing.assert_array_equal(outputs["label"], expected["label"])
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], rtol=1e-6)


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_async_client_predicts_over_tls(
    tls: Server, tls_files: TlsFiles, expected: dict[str, Any], scheme: str
) -> None:
    url = tls.http_url if scheme == "https" else f"grpcs://{tls.grpc_target}"

    async def predict_many() -> list[dict[str, Any]]:
        async with AsyncClient(url, tls_ca=str(tls_files.ca)) as client:
            return await asyncio.gather(
                *(client.predict("iris", {"input": IRIS}) for _ in range(8))
            )

    for outputs in asyncio.run(predict_many()):
        np.testing.assert_array_equal(outputs["label"], expected["label"])


def test_tritonclient_http_with_the_ca(tls: Server, tls_files: TlsFiles) -> None:
    client = triton_http.InferenceServerClient(
        tls.http_url.removeprefix("https://"), ssl=True, ssl_options={"ca_certs": str(tls_files.ca)}
    )
    try:
        assert client.is_server_ready()
        request = triton_http.InferInput("input", list(IRIS.shape), "FP32")
        request.set_data_from_numpy(IRIS)
        result = client.infer("iris", [request])
        assert result.as_numpy("label") is not None
    finally:
        client.close()


def test_tritonclient_grpc_with_the_ca(tls: Server, tls_files: TlsFiles) -> None:
    client = triton_grpc.InferenceServerClient(
        tls.grpc_target, ssl=True, root_certificates=str(tls_files.ca)
    )
    try:
        assert client.is_server_ready()
        request = triton_grpc.InferInput("input", list(IRIS.shape), "FP32")
        request.set_data_from_numpy(IRIS)
        assert client.infer("iris", [request]).as_numpy("label") is not None
    finally:
        client.close()


def test_connection_limits_hold_over_tls(tls: Server, tls_files: TlsFiles) -> None:
    # The limits live in the HTTP protocol class (serving/connections.py), under TLS too.
    headers = {"x-big": "x" * 70_000}
    response = httpx.get(f"{tls.http_url}/v2", headers=headers, verify=tls_files.context())
    assert response.status_code == 431
    assert response.json()["code"] == "payload_too_large"


def test_grpcio_secure_channel_checks_the_host_name(tls: Server, tls_files: TlsFiles) -> None:
    credentials = grpc.ssl_channel_credentials(tls_files.ca.read_bytes())
    assert grpc_live(tls.grpc_target, credentials)
    with pytest.raises(grpc.RpcError) as refused:
        grpc_live(tls.grpc_target, credentials, **{"grpc.ssl_target_name_override": "example.com"})
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_plaintext_to_the_tls_ports_fails(tls: Server) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(tls.http_url.replace("https://", "http://") + "/v2/health/ready", timeout=10)
    with grpc.insecure_channel(tls.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # modelport's own client says what to do.
    plain = Client(tls.http_url.replace("https://", "http://"), retries=0)
    with plain, pytest.raises(Unavailable, match="use https://"):
        plain.server_metadata()
    plain = Client(f"grpc://{tls.grpc_target}", retries=0)
    with plain, pytest.raises(Unavailable, match="use grpcs://"):
        plain.server_metadata()


def test_a_server_signed_by_another_ca_is_refused(tls: Server, tls_files: TlsFiles) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(
            f"{tls.http_url}/v2",
            verify=ssl.create_default_context(cafile=tls_files.other_ca),
            timeout=10,
        )
    other = grpc.ssl_channel_credentials(tls_files.other_ca.read_bytes())
    with pytest.raises(grpc.RpcError):
        grpc_live(tls.grpc_target, other)


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_client_names_an_untrusted_certificate_and_does_not_retry(
    tls: Server, tls_files: TlsFiles, scheme: str
) -> None:
    url = tls.http_url if scheme == "https" else f"grpcs://{tls.grpc_target}"
    # InvalidInput, not Unavailable: a retry would meet the same certificate.
    client = Client(url, tls_ca=tls_files.other_ca, retries=100)
    with client, pytest.raises(InvalidInput, match="certificate is not trusted.*pass the CA"):
        client.server_metadata()


# -- mTLS and the API key -----------------------------------------------------------------


def test_mtls_rest_needs_a_certificate_from_the_ca(mtls: Server, tls_files: TlsFiles) -> None:
    url, headers = f"{mtls.http_url}/v2/models/iris", {"authorization": f"Bearer {KEY}"}
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=tls_files.context(), headers=headers, timeout=10)
    other = tls_files.context()
    other.load_cert_chain(tls_files.other_client_cert, tls_files.other_client_key)
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=other, headers=headers, timeout=10)
    right = httpx.get(url, verify=tls_files.context(client=True), headers=headers, timeout=10)
    assert right.status_code == 200


def test_mtls_grpc_needs_a_certificate_from_the_ca(mtls: Server, tls_files: TlsFiles) -> None:
    ca = tls_files.ca.read_bytes()
    refused = [
        grpc.ssl_channel_credentials(ca),
        grpc.ssl_channel_credentials(
            ca, tls_files.other_client_key.read_bytes(), tls_files.other_client_cert.read_bytes()
        ),
    ]
    for credentials in refused:
        with pytest.raises(grpc.RpcError) as failed:
            grpc_live(mtls.grpc_target, credentials)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    right = grpc.ssl_channel_credentials(
        ca, tls_files.client_key.read_bytes(), tls_files.client_cert.read_bytes()
    )
    assert grpc_live(mtls.grpc_target, right)


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_client_with_certificate_and_key(
    mtls: Server, tls_files: TlsFiles, expected: dict[str, Any], scheme: str
) -> None:
    url = mtls.http_url if scheme == "https" else f"grpcs://{mtls.grpc_target}"
    with Client(url, api_key=KEY, **mtls_kwargs(tls_files)) as client:
        outputs = client.predict("iris", {"input": IRIS})
    np.testing.assert_array_equal(outputs["label"], expected["label"])
    # The probe's refusal proves the key travelled above: without it, or with another, no.
    for key in (None, KEY + "x"):
        client = Client(url, api_key=key, **mtls_kwargs(tls_files))
        with client, pytest.raises(Unauthorized):
            client.predict("iris", {"input": IRIS})


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_client_without_a_client_certificate_is_told_why(
    mtls: Server, tls_files: TlsFiles, scheme: str
) -> None:
    url = mtls.http_url if scheme == "https" else f"grpcs://{mtls.grpc_target}"
    client = Client(url, api_key=KEY, tls_ca=tls_files.ca, retries=0)
    with client, pytest.raises(Unavailable, match="pass client_cert= and client_key="):
        client.server_metadata()
    other = {"client_cert": tls_files.other_client_cert, "client_key": tls_files.other_client_key}
    client = Client(url, api_key=KEY, tls_ca=tls_files.ca, retries=0, **other)
    with client, pytest.raises(Unavailable, match="not accept this client certificate"):
        client.server_metadata()


def test_tritonclient_grpc_with_a_client_certificate_and_key(
    mtls: Server, tls_files: TlsFiles
) -> None:
    client = triton_grpc.InferenceServerClient(
        mtls.grpc_target,
        ssl=True,
        root_certificates=str(tls_files.ca),
        private_key=str(tls_files.client_key),
        certificate_chain=str(tls_files.client_cert),
    )
    try:
        headers = {"authorization": f"Bearer {KEY}"}
        assert client.get_model_metadata("iris", headers=headers).name == "iris"
    finally:
        client.close()


def test_tritonclient_http_with_a_client_certificate(mtls: Server, tls_files: TlsFiles) -> None:
    options = {
        "ca_certs": str(tls_files.ca),
        "certfile": str(tls_files.client_cert),
        "keyfile": str(tls_files.client_key),
    }
    client = triton_http.InferenceServerClient(
        mtls.http_url.removeprefix("https://"), ssl=True, ssl_options=options
    )
    try:
        headers = {"authorization": f"Bearer {KEY}"}
        assert client.get_model_metadata("iris", headers=headers)["name"] == "iris"
    finally:
        client.close()


def test_api_session_takes_key_and_tls_from_settings(
    mtls: Server, models: Path, tls_files: TlsFiles
) -> None:
    # What Registry.remote and the CLI's --remote commands talk through.
    settings = Settings(
        home=models,
        api_key=KEY,
        tls_ca=tls_files.ca,
        tls_client_cert=tls_files.client_cert,
        tls_client_key=tls_files.client_key,
    )
    with api_session(mtls.http_url, settings=settings) as session:
        assert session.get("/v2/models/iris").json()["name"] == "iris"


def test_predict_remote_uses_the_environment(
    mtls: Server, models: Path, tls_files: TlsFiles
) -> None:
    env = cli_env(
        models,
        {
            "MODELPORT_API_KEY": KEY,
            "MODELPORT_TLS_CA": str(tls_files.ca),
            "MODELPORT_TLS_CLIENT_CERT": str(tls_files.client_cert),
            "MODELPORT_TLS_CLIENT_KEY": str(tls_files.client_key),
        },
    )
    for url in (mtls.http_url, f"grpcs://{mtls.grpc_target}"):
        result = subprocess.run(
            [CLI, "predict", "iris", "--remote", url, "--input", '{"input": [[5.1, 3.5, 1.4, 0.2]]}'],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert '"label"' in result.stdout


# -- worker processes ---------------------------------------------------------------------


def test_tls_with_two_worker_processes(models: Path, tls_files: TlsFiles) -> None:
    with running_tls_server(models, ["iris"], tls_files, ["--workers", "2"], mtls=True) as server:
        context = tls_files.context(client=True)
        # New connections each time: the kernel spreads them over both workers.
        for _ in range(8):
            with httpx.Client(verify=context, timeout=10) as client:
                assert client.get(f"{server.http_url}/v2/models/iris/ready").status_code == 200
        credentials = grpc.ssl_channel_credentials(
            tls_files.ca.read_bytes(),
            tls_files.client_key.read_bytes(),
            tls_files.client_cert.read_bytes(),
        )
        for _ in range(4):
            assert grpc_live(server.grpc_target, credentials)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.http_url}/v2", verify=tls_files.context(), timeout=10)
        assert "(2 worker processes); client certificates required" in server.output()
    checked_exit(server)


# -- start-up checks ----------------------------------------------------------------------


def serve_error(home: Path, *args: str) -> str:
    """What ``modelport serve iris ARGS`` says on failing to start (exit code 2)."""
    port = free_port()
    result = subprocess.run(
        [CLI, "serve", "iris", "--http-port", str(port), "--no-grpc", *args],
        env=cli_env(home), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    with socket.socket() as probe:  # nothing kept the port: it never got as far as binding
        probe.bind(("127.0.0.1", port))
    return result.stderr


def test_bad_tls_files_stop_the_server_with_one_clear_error(
    models: Path, tls_files: TlsFiles, tmp_path: Path
) -> None:
    cert, key = str(tls_files.cert), str(tls_files.key)
    missing = str(tmp_path / "missing.pem")
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_bytes(tls_files.key.read_bytes())
    unreadable.chmod(0)
    cases = {
        f"--tls-key {missing}: cannot read it (No such file or directory)": [
            "--tls-cert", cert, "--tls-key", missing
        ],
        f"--tls-key {tls_files.client_key} is not the private key of --tls-cert {cert}": [
            "--tls-cert", cert, "--tls-key", str(tls_files.client_key)
        ],
        f"--tls-cert {key}: no PEM certificate in it": ["--tls-cert", key, "--tls-key", key],
        "--tls-cert needs --tls-key": ["--tls-cert", cert],
        "--tls-client-ca needs --tls-cert and --tls-key": ["--tls-client-ca", cert],
        f"--tls-client-ca {missing}: cannot read it": [
            "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", missing
        ],
    }  # fmt: skip
    if not _root():
        cases[f"--tls-key {unreadable}: cannot read it (Permission denied)"] = [
            "--tls-cert", cert, "--tls-key", str(unreadable)
        ]  # fmt: skip
    for message, args in cases.items():
        said = serve_error(models, *args)
        assert said.startswith(f"error: {message}"), said
        assert said.count("\n") == 1, said  # one line, no traceback
    # Worker processes: the supervisor checks before starting any.
    args = ["--tls-cert", cert, "--tls-key", str(tls_files.client_key), "--workers", "2"]
    assert "is not the private key of --tls-cert" in serve_error(models, *args)


def _root() -> bool:
    return os.geteuid() == 0  # root reads any file


def test_an_expired_certificate_is_refused(
    models: Path, tls_files: TlsFiles, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(tls_files.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(long_ago)
        .not_valid_after(long_ago + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    expired = tmp_path / "expired.pem"
    expired.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    said = serve_error(models, "--tls-cert", str(expired), "--tls-key", str(tls_files.key))
    assert said == (
        f"error: --tls-cert {expired}: the certificate CN=expired expired on 2020-01-02 00:00 "
        "UTC; renew it\n"
    )


# -- the client's own checks --------------------------------------------------------------


def test_client_refuses_tls_files_for_plaintext_urls(tls_files: TlsFiles) -> None:
    with pytest.raises(InvalidInput, match="tls_ca given for http://127.0.0.1:1, which is not TLS"):
        Client("http://127.0.0.1:1", tls_ca=tls_files.ca)
    with pytest.raises(InvalidInput, match="use https:// .* or grpcs://"):
        Client("grpc://127.0.0.1:1", client_cert=tls_files.client_cert)
    with pytest.raises(InvalidInput, match="client_cert and client_key go together"):
        Client("https://127.0.0.1:1", client_cert=tls_files.client_cert)
    with pytest.raises(InvalidInput, match="tls_ca .*missing.pem"):
        Client("https://127.0.0.1:1", tls_ca=tls_files.ca.parent / "missing.pem")
    with pytest.raises(InvalidInput, match="API key holds spaces"):
        Client("http://127.0.0.1:1", api_key="mp_x\r\nx-injected: 1")
    with pytest.raises(InvalidInput, match="not both"):
        Client("http://127.0.0.1:1", api_key=KEY, headers={"Authorization": "Bearer x"})
    # REST checks the host name as the standard library does (gRPC: the test above).
    context = ClientTls(tls_files.ca).ssl_context()
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
