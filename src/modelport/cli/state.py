"""What the top-level options set for the whole command line: ``modelport --remote URL ...``
(or ``MODELPORT_REMOTE``) makes every registry command use that server's registry."""

from __future__ import annotations

__all__ = ["remote_url", "set_remote_url"]

_remote: list[str | None] = [None]


def set_remote_url(url: str | None) -> None:
    _remote[0] = url.rstrip("/") if url else None


def remote_url() -> str | None:
    """The server whose registry registry commands use, or None for the local one."""
    return _remote[0]
