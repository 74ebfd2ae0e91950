"""The HTTP session every remote registry and management call uses: the API key as a
bearer token, and TLS as the settings say (``MODELPORT_TLS_CA``, ``MODELPORT_TLS_CLIENT_*``).

``Registry.remote``, ``modelport --remote ... keys|audit`` and the sharing commands build
theirs here, so that a key or a CA bundle is configured once for all of them.
"""

from __future__ import annotations

import ssl

import httpx

from modelport.client.tls import auth_headers, tls_context
from modelport.config import Settings, load_settings

__all__ = ["api_session", "auth_headers", "tls_context"]


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
