"""When auth is on, and when ``serve`` refuses to start.

Auth is on whenever the server binds anything but loopback (127.0.0.0/8, ::1, localhost),
unless ``--no-auth``; on loopback it is off unless ``--auth``, so the quick start needs no
key. On a non-loopback address, ``serve`` refuses to start with auth off, or with auth on
and no live key to let anyone in, unless ``--insecure`` says the user means it.
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import Engine

from modelport.errors import InvalidInput
from modelport.security.keys import KeyStore
from modelport.serving.config import ServeConfig

__all__ = ["auth_on", "check_exposure", "is_loopback"]

FIRST_KEY = "modelport keys create --name admin --scope admin"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def auth_on(config: ServeConfig) -> bool:
    """Whether the server checks keys: ``config.auth``, or by default off on loopback only."""
    return config.auth if config.auth is not None else not is_loopback(config.host)


def check_exposure(config: ServeConfig, engine: Engine) -> bool:
    """Whether auth is on; refuses a server that would be open on the network.

    Raises:
        InvalidInput: a non-loopback host with auth off, or with no live key, and not
            ``config.insecure``; the message says what to do.
    """
    on = auth_on(config)
    if config.insecure or is_loopback(config.host):
        return on
    if not on:
        raise InvalidInput(
            f"refusing to serve on {config.host} with auth off: anyone who can reach it could "
            "predict, read metrics and unload models. Drop --no-auth (create a key first: "
            f"{FIRST_KEY}), or add --insecure if the network is trusted"
        )
    if not KeyStore(engine).live_keys():
        raise InvalidInput(
            f"refusing to serve on {config.host}: auth is on but no API key exists, so "
            f"nobody could use the server. Create one first: {FIRST_KEY} (then pass it as "
            "'Authorization: Bearer <key>'), or add --insecure"
        )
    return on
