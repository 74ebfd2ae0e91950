"""Test certificates made with ``cryptography``, and a ``modelport serve`` with TLS.

The ``tls_files`` fixture is in ``conftest`` (every test module may ask for it)::

    def test_x(tls_files: TlsFiles, home: Path) -> None:
        with running_tls_server(home, ["iris"], tls_files) as server:
            httpx.get(f"{server.http_url}/v2/health/ready", verify=tls_files.context())

``tls_files`` (module scope) writes, to a temporary directory:

- ``ca``: a CA certificate; it signed the server's and the first client's certificates;
- ``cert``/``key``: the server's certificate, valid for 127.0.0.1 (an IP SAN) and localhost;
- ``client_cert``/``client_key``: a client certificate signed by ``ca`` (mTLS);
- ``other_ca``, ``other_client_cert``/``other_client_key``: another CA and a client
  certificate it signed, which a server trusting ``ca`` must refuse.

Keys are P-256 (quick to make); certificates are valid from an hour ago for a day.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.serving_fixtures import CLI, Server, cli_env, free_port, wait_until

__all__ = ["TlsFiles", "make_tls_files", "running_tls_server", "tls_files"]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files ``make_tls_files`` wrote."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path

    def server_args(self, *, mtls: bool = False) -> list[str]:
        """``serve`` flags for this server certificate (and ``--tls-client-ca`` with mtls)."""
        args = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        return [*args, "--tls-client-ca", str(self.ca)] if mtls else args

    def context(self, *, client: bool = False) -> ssl.SSLContext:
        """A client context trusting ``ca``, presenting the client certificate if ``client``."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Issuer | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    """A certificate for ``key``; self-signed when ``issuer`` is None."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer = issuer or _Issuer(name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer.key, hashes.SHA256())


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _make_ca(directory: Path, name: str) -> tuple[_Issuer, Path]:
    key = _new_key()
    certificate = _certificate(f"modelport test {name}", key, None, ca=True)
    path = directory / f"{name}.pem"
    _write_certificate(path, certificate)
    return _Issuer(certificate.subject, key), path


def _make_leaf(
    directory: Path, name: str, issuer: _Issuer, *, server: bool = False
) -> tuple[Path, Path]:
    key = _new_key()
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    _write_certificate(cert_path, _certificate(name, key, issuer, server=server))
    _write_key(key_path, key)
    return cert_path, key_path


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a CA, a server certificate and key, and client certificates to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer, ca = _make_ca(directory, "ca")
    other_issuer, other_ca = _make_ca(directory, "other-ca")
    cert, key = _make_leaf(directory, "server", issuer, server=True)
    client_cert, client_key = _make_leaf(directory, "client", issuer)
    other_client_cert, other_client_key = _make_leaf(directory, "other-client", other_issuer)
    return TlsFiles(
        ca, cert, key, client_cert, client_key, other_ca, other_client_cert, other_client_key
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificates for one test module (see the module's docstring)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def running_tls_server(
    home: Path,
    refs: Sequence[str],
    tls: TlsFiles,
    extra_args: Sequence[str] = (),
    *,
    mtls: bool = False,
    tls_flags: bool = True,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60,
) -> Iterator[Server]:
    """``serving_fixtures.running_server`` with ``tls``'s server certificate (and
    ``--tls-client-ca`` with ``mtls``): ``server.http_url`` is ``https://127.0.0.1:PORT``,
    ``server.grpc_target`` ``127.0.0.1:PORT`` (TLS). Waits until ready, checked over TLS
    (with the client certificate when ``mtls``); stops the server with SIGTERM on leaving.

    ``tls_flags=False``: no ``--tls-*`` flags; the TLS settings come from ``extra_args``
    (a ``--config`` file, say).
    """
    flags = tls.server_args(mtls=mtls) if tls_flags else []
    http_port, grpc_port = free_port(), free_port()
    log = home.parent / f"serve-tls-{http_port}.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [CLI, "serve", *refs, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
             *flags, *extra_args],
            env=cli_env(home, env), stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(proc, f"https://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", home, log)
    context = tls.context(client=mtls)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            response = httpx.get(f"{server.http_url}/v2/health/ready", verify=context, timeout=1)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    try:
        try:
            wait_until(ready, "the TLS server ready", ready_timeout, poll=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{server.output()}") from None
        yield server
    finally:
        server.stop()
