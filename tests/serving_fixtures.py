"""Real servers for serving tests: push models with the CLI, run ``modelport serve`` as users do.

::

    push(home, make_iris_onnx(tmp / "iris.onnx", zipmap=False), "iris", "production")
    with running_server(home, ["iris@production"]) as server:
        httpx.get(f"{server.http_url}/v2/health/ready")
        tritonclient.grpc.InferenceServerClient(server.grpc_target)
    assert server.proc.returncode == 0  # drained and exited on SIGTERM

Each server gets its own ephemeral ports and an environment with no ``MODELPORT_*`` variable
but ``MODELPORT_HOME``, so tests are safe to run in parallel (``pytest -n``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelport import Registry, Settings
from modelport.types import Tensors

CLI = str(Path(sys.executable).parent / "modelport")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the CLI: only ``MODELPORT_HOME`` of our variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    return env | {"MODELPORT_HOME": str(home), "NO_COLOR": "1", **(extra or {})}


def push(home: Path, path: Path, name: str, *aliases: str) -> None:
    """``modelport push PATH --name NAME [--alias A ...]`` into ``home``."""
    push_all(home, [(path, name, aliases)])


def push_all(home: Path, models: Sequence[tuple[Path, str, Sequence[str]]]) -> None:
    """Push ``(path, name, aliases)`` each with its own ``modelport push``, all at once."""
    procs = []
    for path, name, aliases in models:
        args = [CLI, "push", str(path), "--name", name]
        for alias in aliases:
            args += ["--alias", alias]
        procs.append(
            subprocess.Popen(
                args, env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    failures = []
    for proc, (_, name, _) in zip(procs, models, strict=True):
        output, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures.append(f"push {name} failed:\n{output.decode(errors='replace')}")
    assert not failures, "\n".join(failures)


def predict_in_process(home: Path, ref: str, inputs: Tensors) -> Tensors:
    """What the registry's own copy of ``ref`` predicts, without any server in between."""
    with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
        model = registry.load(ref)
        try:
            return model.predict(inputs)
        finally:
            model.close()


@dataclass
class Server:
    """A running ``modelport serve`` process."""

    proc: subprocess.Popen[bytes]
    http_url: str
    grpc_target: str
    home: Path
    log: Path

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the drain; kill (and fail) if it takes over ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"server did not exit within {timeout}s of SIGTERM:\n{self.output()}"
                ) from None
        return self.proc.returncode


@contextlib.contextmanager
def running_server(
    home: Path,
    refs: Sequence[str],
    extra_args: Sequence[str] = (),
    *,
    ready_timeout: float = 30,
    env: Mapping[str, str] | None = None,
    ready_headers: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """Serve ``refs`` from ``home`` (REST and gRPC on free ports) until the block ends.

    Waits until ``/v2/health/ready`` answers 200 (every model loaded and warm); on leaving,
    stops the server with SIGTERM. The exit code is then in ``server.proc.returncode``.
    ``ready_headers`` go with the readiness checks (an API key, when auth is on).
    """
    for attempt in range(3):
        http_port, grpc_port = free_port(), free_port()
        log = home.parent / f"serve-{http_port}.log"
        with log.open("wb") as output:
            proc = subprocess.Popen(
                [CLI, "serve", *refs, "--http-port", str(http_port),
                 "--grpc-port", str(grpc_port), *extra_args],
                env=cli_env(home, env), stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        http_url, grpc_target = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        server = Server(proc, http_url, grpc_target, home, log)
        try:
            if _wait_ready(server, ready_timeout, ready_headers):
                break
        except BaseException:
            server.stop()
            raise
        # Another process took a port between free_port() and the bind: try new ones.
        if attempt == 2 or "in use" not in server.output():
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.output()}")
    try:
        yield server
    finally:
        server.stop()


def _wait_ready(server: Server, timeout: float, headers: Mapping[str, str] | None = None) -> bool:
    """True once ready; False if the process exited first; AssertionError on time-out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            ready = httpx.get(f"{server.http_url}/v2/health/ready", headers=headers, timeout=1)
            if ready.status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server not ready within {timeout}s:\n{server.output()}")


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 30, poll: float = 0.02
) -> None:
    """Return once ``condition()`` is true; AssertionError naming ``what`` after ``timeout``.

    What tests wait on instead of sleeping: something observable (a metric, a count of
    answers), checked every ``poll`` seconds until a deadline.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(poll)


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of the server's ``/metrics`` (0 when absent); ``labels`` as exposed,
    e.g. ``'reason="x"'``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    selector = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(selector):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.contextmanager
def continuous_load(
    url: str, body: Mapping[str, object], senders: int = 4, limit: float = 60
) -> Iterator[Counter[tuple[int, str]]]:
    """``senders`` clients posting ``body`` to ``url`` back to back until the block ends
    (at most ``limit`` seconds); counts answers by (status, model_version)."""
    stop = threading.Event()
    seen: Counter[tuple[int, str]] = Counter()

    def send() -> None:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + limit
            while not stop.is_set() and time.monotonic() < deadline:
                response = client.post(url, json=body)
                ok = response.status_code == 200
                version = response.json().get("model_version", "") if ok else ""
                seen[(response.status_code, version)] += 1

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(limit)
