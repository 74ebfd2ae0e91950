"""What the top-level options set for the whole command line: ``modelport --remote URL ...``
(or ``MODELPORT_REMOTE``) makes every registry command use that server's registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.errors import InvalidInput

if TYPE_CHECKING:
    from modelport.client.remote_registry import RemoteRegistry
    from modelport.registry import Registry

__all__ = ["LOCAL_ONLY", "open_registry", "refuse_local_only", "remote_url", "set_remote_url"]

LOCAL_ONLY = frozenset({"convert", "optimize", "tune", "serve"})
"""Commands that work on the local registry only: with a remote set they say so."""

_remote: list[str | None] = [None]


def set_remote_url(url: str | None) -> None:
    _remote[0] = url.rstrip("/") if url else None


def remote_url() -> str | None:
    """The server whose registry registry commands use, or None for the local one."""
    return _remote[0]


def open_registry() -> Registry | RemoteRegistry:
    """The registry registry commands use: the remote one when ``remote_url()`` is set."""
    from modelport.config import load_settings
    from modelport.registry import Registry

    url = remote_url()
    return Registry.remote(url) if url is not None else Registry(load_settings())


def refuse_local_only(command: str | None) -> None:
    """``InvalidInput`` when ``command`` cannot run against a remote registry and one is set."""
    if command in LOCAL_ONLY and remote_url() is not None:
        raise InvalidInput(
            f"modelport {command} works on the local registry only, and --remote (or "
            f"MODELPORT_REMOTE) names {remote_url()}; run it on the server's machine, or "
            "without the remote (pull the model first: modelport pull REF -o DIR)"
        )
