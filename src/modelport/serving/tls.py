"""TLS for both ports from one set of files: ``serve --tls-cert --tls-key [--tls-client-ca]``.

``ServerTls.load(config)`` reads and checks the files once, before anything binds: a missing
or unreadable file, a file that is not PEM, a key that does not match the certificate, an
expired certificate are each one ``InvalidInput`` naming the flag and the file. The REST
server then gets ``http_context()`` (uvicorn wraps each accepted connection in it) and the
gRPC server ``grpc_credentials()``.

With ``--tls-client-ca`` both ports require a client certificate that CA signed (mTLS): a
connection without one, or with one from another CA, fails its handshake and reaches no
route. A certificate says only that its holder is someone the CA vouched for; what a caller
may do is the API key's business (``security``).

Worker processes each load the files themselves (an ``SSLContext`` does not cross a process
boundary); the supervisor loads them first, so a bad file stops the command before any
worker starts.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelport.errors import InvalidInput

if TYPE_CHECKING:
    import grpc

    from modelport.serving.config import ServeConfig

__all__ = ["ServerTls"]


@dataclass(frozen=True)
class ServerTls:
    """The checked contents of the server's TLS files (PEM bytes)."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    """Certificates of the CA(s) whose client certificates are accepted; None: no mTLS."""
    cert_path: Path
    key_path: Path
    client_ca_path: Path | None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (``--tls-client-ca``)."""
        return self.client_ca is not None

    @classmethod
    def load(cls, config: ServeConfig) -> ServerTls | None:
        """The TLS files ``config`` names, read and checked; None when it names none.

        Raises:
            InvalidInput: a flag without its partner, a file that cannot be read, is not
                PEM, or a key that does not belong to the certificate; an expired
                certificate.
        """
        cert, key, client_ca = config.tls_cert, config.tls_key, config.tls_client_ca
        if cert is None and key is None and client_ca is None:
            return None
        if cert is None and key is None:
            raise InvalidInput(
                "--tls-client-ca needs --tls-cert and --tls-key: client certificates are "
                "checked only on a TLS server"
            )
        if cert is None or key is None:
            given, missing = ("--tls-cert", "--tls-key")
            if cert is None:
                given, missing = missing, given
            raise InvalidInput(
                f"{given} needs {missing}: give both the server's certificate (PEM) and its "
                "private key (PEM)"
            )
        tls = cls(
            cert_chain=_read(cert, "--tls-cert"),
            key=_read(key, "--tls-key"),
            client_ca=_read(client_ca, "--tls-client-ca") if client_ca is not None else None,
            cert_path=cert,
            key_path=key,
            client_ca_path=client_ca,
        )
        _check_certificates(tls.cert_chain, cert, "--tls-cert")
        if tls.client_ca is not None and client_ca is not None:
            _check_certificates(tls.client_ca, client_ca, "--tls-client-ca")
        tls.http_context()  # the key must load, and match the certificate
        return tls

    def http_context(self) -> ssl.SSLContext:
        """A server context for the REST port: TLS 1.2 or later, HTTP/1.1 by ALPN, and a
        client certificate required when ``mutual``.

        Raises:
            InvalidInput: the key does not load or does not match the certificate.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        try:
            # A password prompt on the terminal would hang a server started by a supervisor.
            context.load_cert_chain(self.cert_path, self.key_path, password=_no_password)
        except _EncryptedKey:
            raise InvalidInput(
                f"--tls-key {self.key_path}: the key is encrypted; give it unencrypted "
                "(e.g. openssl pkey -in KEY -out KEY.pem) and keep the file readable only by "
                "the server's user"
            ) from None
        except ssl.SSLError as exc:
            raise InvalidInput(_key_problem(exc, self.cert_path, self.key_path)) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cadata=self.client_ca.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError) as exc:
                raise InvalidInput(
                    f"--tls-client-ca {self.client_ca_path}: not a PEM CA certificate ({exc})"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """The gRPC port's credentials: the same certificate; with ``mutual``, a client
        certificate signed by the client CA is required."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual,
        )


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidInput(f"{flag} {path}: cannot read it ({reason})") from None
    if b"-----BEGIN " not in data:
        raise InvalidInput(f"{flag} {path}: not a PEM file (no '-----BEGIN' line)")
    return data


def _check_certificates(data: bytes, path: Path, flag: str) -> None:
    """Every certificate in ``data`` parses, and the first (the server's, a CA's) is valid now."""
    from cryptography import x509  # only a server with TLS pays for the import

    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidInput(f"{flag} {path}: no PEM certificate in it") from None
    expires = certificates[0].not_valid_after_utc
    if expires < datetime.datetime.now(datetime.UTC):
        subject = certificates[0].subject.rfc4514_string()
        raise InvalidInput(
            f"{flag} {path}: the certificate {subject} expired on {expires:%Y-%m-%d %H:%M} UTC; "
            "renew it"
        )


def _key_problem(exc: ssl.SSLError, cert: Path, key: Path) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return (
            f"--tls-key {key} is not the private key of --tls-cert {cert}; give the key the "
            "certificate was issued for"
        )
    return f"--tls-key {key}: not a PEM private key that loads ({exc})"
