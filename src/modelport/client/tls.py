"""What a client presents and trusts: the API key it sends, the TLS files it uses.

``Client``/``AsyncClient`` (``https://``, ``grpcs://``) and ``api.api_session`` build their
TLS here, so the rules are the same for all: the server's certificate is checked against
``ca`` (default: the system's trust store for REST, grpcio's bundled roots for gRPC) with
hostname checks; ``cert``/``key`` are presented when the server asks (mTLS). Nothing here
reads the environment: callers pass what they were given (the CLI passes ``Settings``).

A TLS failure is not worth retrying: a server whose certificate is not trusted, or that
refuses the client's, will do the same next time. ``untrusted`` is the error for it.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelport.errors import InvalidInput

if TYPE_CHECKING:
    import grpc

__all__ = ["SECURE_SCHEMES", "ClientTls", "auth_headers", "client_tls", "tls_context", "untrusted"]

SECURE_SCHEMES = ("https", "grpcs")

# What an HTTP header value may hold here: printable ASCII without spaces, so that a key
# cannot end the header it is written in.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``{"authorization": "Bearer <api_key>"}``, or nothing without a key.

    Raises:
        InvalidInput: the key holds spaces, control or non-ASCII characters.
    """
    if not api_key:
        return {}
    if not _TOKEN.fullmatch(api_key):
        raise InvalidInput(
            "the API key holds spaces, control or non-ASCII characters; give the key exactly "
            "as `modelport keys create` printed it (mp_...)"
        )
    return {"authorization": f"Bearer {api_key}"}


def tls_context(
    ca: Path | None = None, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` (default: the system's trust store), checking the
    server's hostname, presenting ``client_cert``/``client_key`` when given (mTLS).

    Raises:
        InvalidInput: a file cannot be read or is not PEM, or the key does not fit the cert.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"tls_ca {ca}: cannot use it as a CA bundle (PEM): {exc}") from None
    if client_cert is not None:
        try:
            context.load_cert_chain(client_cert, client_key, password=_no_password)
        except (OSError, ssl.SSLError, _EncryptedKey) as exc:
            raise InvalidInput(
                f"client_cert {client_cert} / client_key {client_key}: cannot use them as a "
                f"PEM certificate and its unencrypted private key ({exc or 'encrypted key'})"
            ) from None
    return context


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS files; all optional (the system's roots, no client certificate)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The context for REST (``https://``); see ``tls_context``."""
        return tls_context(self.ca, self.cert, self.key)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        """The credentials for a ``grpcs://`` channel (hostname checked by grpc).

        Raises:
            InvalidInput: a file cannot be read.
        """
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "tls_ca"),
            private_key=_read(self.key, "client_key"),
            certificate_chain=_read(self.cert, "client_cert"),
        )


def client_tls(
    url: str, ca: Path | str | None, cert: Path | str | None, key: Path | str | None
) -> ClientTls | None:
    """The TLS a client of ``url`` uses: None for ``http://`` and ``grpc://``.

    Raises:
        InvalidInput: TLS files given for a plaintext URL, or a certificate without its key.
    """
    secure = url.partition("://")[0].lower() in SECURE_SCHEMES
    given = [name for name, v in (("tls_ca", ca), ("client_cert", cert), ("client_key", key)) if v]
    if not secure:
        if given:
            raise InvalidInput(
                f"{', '.join(given)} given for {url}, which is not TLS; use https:// (REST) or "
                "grpcs:// (gRPC) to talk to a server started with --tls-cert"
            )
        return None
    if (cert is None) != (key is None):
        raise InvalidInput("client_cert and client_key go together (mTLS): give both, or neither")
    return ClientTls(*(Path(v) if v is not None else None for v in (ca, cert, key)))


def untrusted(url: str, reason: str) -> InvalidInput:
    """The error for a TLS handshake with ``url`` that failed: not retried, the cause named."""
    if "certificate" in reason.lower() or "hostname" in reason.lower():
        advice = (
            "pass the CA that signed the server's certificate (tls_ca=, MODELPORT_TLS_CA) and "
            "use the host name or address the certificate names"
        )
    else:
        advice = (
            "does the server serve TLS (modelport serve --tls-cert)? if not, use http:// or grpc://"
        )
    return InvalidInput(f"TLS with {url} failed: {reason}; {advice}")


class _EncryptedKey(Exception):
    def __str__(self) -> str:
        return "the key is encrypted"


def _no_password() -> str:
    # Without this, ssl prompts on the terminal for an encrypted key's password.
    raise _EncryptedKey


def _read(path: Path | None, name: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{name} {path}: cannot read it ({exc.strerror})") from None
