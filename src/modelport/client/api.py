"""The HTTP session every remote registry and management call uses: the API key as a
bearer token, and TLS as the settings say (``MODELPORT_TLS_CA``, ``MODELPORT_TLS_CLIENT_*``).

``Registry.remote``, ``modelport --remote ... keys|audit`` and the sharing commands build
theirs here, so that a key or a CA bundle is configured once for all of them.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from modelport.config import Settings, load_settings
from modelport.errors import InvalidInput

__all__ = ["api_session", "auth_headers", "tls_context"]


def tls_context(
    ca: Path | None = None, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` (default: the system's trust store), presenting
    ``client_cert``/``client_key`` when given (mTLS)."""
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if client_cert is not None:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot use the TLS files given: {exc}") from exc
    return context


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def api_session(
    url: str,
    *,
    api_key: str | None = None,
    settings: Settings | None = None,
    timeout: float = 60.0,
) -> httpx.Client:
    """An ``httpx.Client`` for the server at ``url``: ``api_key`` (default
    ``MODELPORT_API_KEY``) sent on every request, TLS from the settings."""
    settings = settings or load_settings()
    if api_key is None and settings.api_key is not None:
        api_key = settings.api_key.get_secret_value()
    verify: ssl.SSLContext | bool = True
    if url.startswith("https://"):
        verify = tls_context(settings.tls_ca, settings.tls_client_cert, settings.tls_client_key)
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers=auth_headers(api_key),
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=10.0),
    )
