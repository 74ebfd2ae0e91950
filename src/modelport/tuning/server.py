"""A real ``modelport serve`` on loopback, serving one version with one point's settings."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from modelport.config import Settings
from modelport.errors import Internal

__all__ = ["serving"]

_READY_SECONDS = 120.0
_STOP_SECONDS = 30.0
_REGISTRY_VARIABLES = (
    "home", "db_url", "store_path", "store_url", "s3_endpoint_url", "cache_path",
    "encryption_key_file", "plaintext_cache",
)  # fmt: skip


@contextlib.contextmanager
def serving(settings: Settings, ref: str, name: str, point: dict[str, Any]) -> Iterator[str]:
    """Serve ``ref`` as ``name`` with ``point``'s settings; yields the server's base URL.

    The server reads the same registry as ``settings`` (passed in its environment) and
    listens on a free port of 127.0.0.1 only; it is stopped (SIGTERM) when the block ends.

    Raises:
        Internal: the server exited or was not ready within two minutes (its output is in
            the message).
    """
    with tempfile.TemporaryDirectory(prefix="modelport-tune-") as scratch:
        config = Path(scratch) / "serve.toml"
        config.write_text(_config_text(ref, name, point))
        log = Path(scratch) / "serve.log"
        port = _free_port()
        with log.open("wb") as output:
            proc = subprocess.Popen(
                [sys.executable, "-m", "modelport", "serve", "--config", str(config),
                 "--host", "127.0.0.1", "--http-port", str(port), "--no-grpc"],
                env=_environment(settings), stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, url, log)
            yield url
        finally:
            _stop(proc)


def _config_text(ref: str, name: str, point: dict[str, Any]) -> str:
    # Every tuned setting is written out, so stored settings never change what is measured.
    lines = [f"[models.{name}]", f'ref = "{ref}"']
    lines += [f"{key} = {value!r}" for key, value in point.items()]
    return "\n".join(lines) + "\n"


def _environment(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODELPORT_")}
    for field in _REGISTRY_VARIABLES:
        value = getattr(settings, field)
        if value is not None:
            env[f"MODELPORT_{field.upper()}"] = str(value)
    if settings.encryption_key is not None:  # a SecretStr: str() would hide it
        env["MODELPORT_ENCRYPTION_KEY"] = settings.encryption_key.get_secret_value()
    env["MODELPORT_VERIFY"] = settings.verify
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + _READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.05)  # polling the readiness endpoint, bounded by the deadline
    output = log.read_text(errors="replace")[-2000:]
    raise Internal(f"the server for tuning did not become ready:\n{output}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
