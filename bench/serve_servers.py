"""Servers the serving benchmark starts: modelport, MLServer, the bare Starlette floor.

Each server runs in its own process group on free loopback ports; ``stop_all`` (called in
a ``finally`` and at exit, and on SIGTERM/SIGINT of the benchmark) stops every group this
module started, first with SIGTERM and then SIGKILL. Memory and CPU are read from /proc for
the server's whole process tree (MLServer's inference workers included).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BENCH",
    "MLSERVER_PACKAGES",
    "Server",
    "ensure_mlserver",
    "free_port",
    "install_cleanup",
    "mlserver_server",
    "modelport_server",
    "starlette_server",
    "stop_all",
]

BENCH = Path(__file__).resolve().parent
# uvloop 0.22 made asyncio.get_event_loop() raise outside a running loop, which MLServer
# 1.7.1's inference workers call at start: with it every worker dies at once and no model
# loads ("There is no current event loop in thread 'MainThread'"). httptools gives MLServer's
# uvicorn the same HTTP parser modelport uses (plain ``pip install mlserver`` falls back to h11).
MLSERVER_PACKAGES = ["mlserver", "onnxruntime", "numpy", "httptools", "uvloop<0.22"]

_STARTED: list[Server] = []
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """One server process (and its children) under test."""

    name: str
    argv: list[str]
    http_port: int
    grpc_port: int | None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, ready_paths: list[str], timeout: float = 180.0) -> None:
        """Start it and wait until every path in ``ready_paths`` answers 200.

        Raises:
            RuntimeError: it exited or was not ready in time (the log's tail is included).
        """
        log = (self.log or Path(os.devnull)).open("wb")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, workers included
        )
        log.close()
        _STARTED.append(self)
        deadline = time.monotonic() + timeout
        pending = list(ready_paths)
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}{self._tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s{self._tail()}")
            if _status(self.base_url + pending[0]) == 200:
                pending.pop(0)
            else:
                time.sleep(0.2)

    def _tail(self) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        return ":\n" + self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after 15 s."""
        process = self.process
        if process is None or process.poll() is not None:
            _reap_group(process)
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)
        _reap_group(process)

    def tree(self) -> list[int]:
        """The server's pid and every descendant's."""
        if self.process is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        found = [self.process.pid]
        for pid in found:
            found.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU of the live process tree, threads included."""
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / _TICKS

    def memory(self) -> dict[str, float]:
        """MiB of the tree: RSS summed (shared pages counted in each process), PSS summed
        (shared pages split between the processes that map them), and process count."""
        rss = pss = 0
        pids = self.tree()
        for pid in pids:
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            except OSError:
                continue
            for line in rollup:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        return {"rss_mib": rss / 1024, "pss_mib": pss / 1024, "processes": len(pids)}


def _reap_group(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # leftovers: workers, resource trackers
    if process.poll() is None:
        process.wait(10)


def stop_all() -> None:
    """Stop every server this module started (idempotent)."""
    while _STARTED:
        _STARTED.pop().stop()


def _on_signal(signum: int, _frame: object) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop every started server at exit and on SIGTERM, SIGINT or SIGHUP of this process."""
    atexit.register(stop_all)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def modelport_server(home: Path, refs: list[str], log: Path, extra: list[str]) -> Server:
    """``modelport serve`` with REST and gRPC, from the interpreter running the benchmark."""
    http, grpc = free_port(), free_port()
    modelport = Path(sys.executable).parent / "modelport"
    argv = [str(modelport), "serve", *refs, "--http-port", str(http), "--grpc-port", str(grpc)]
    env = dict(os.environ, MODELPORT_HOME=str(home))
    return Server("modelport", [*argv, *extra], http, grpc, env=env, log=log)


def starlette_server(model: Path, log: Path, workers: int = 1) -> Server:
    """The bare Starlette + uvicorn + orjson + onnxruntime endpoint for one model, in
    ``workers`` processes."""
    port = free_port()
    argv = [sys.executable, str(BENCH / "peers_starlette.py"), str(model), str(port)]
    return Server("starlette", [*argv, str(workers)], port, None, log=log)


def ensure_mlserver(venv: Path, log: Path) -> tuple[Path | None, str]:
    """A throwaway venv with MLServer; (its python, versions) or (None, why it failed)."""
    python = venv / "bin" / "python"
    wanted = venv / ".bench-packages"
    with log.open("ab") as out:
        try:
            if not python.is_file():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out
                )
            if not wanted.is_file() or wanted.read_text() != "\n".join(MLSERVER_PACKAGES):
                subprocess.run(
                    [str(python), "-m", "pip", "install", "-q", *MLSERVER_PACKAGES],
                    check=True,
                    stdout=out,
                    stderr=out,
                )
                wanted.write_text("\n".join(MLSERVER_PACKAGES))
        except (OSError, subprocess.CalledProcessError) as exc:
            return None, f"installing {' '.join(MLSERVER_PACKAGES)} failed ({exc}); see {log}"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in "
            "('mlserver', 'onnxruntime', 'uvicorn', 'uvloop', 'httptools', 'fastapi')))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None, f"MLServer's venv is broken: {probe.stderr[-500:]}"
    return python, probe.stdout.strip()


def mlserver_server(
    python: Path,
    root: Path,
    models: dict[str, Path],
    *,
    workers: int | None,
    batching: bool,
    log: Path,
) -> Server:
    """MLServer serving ``models`` with the custom runtime of ``peers_mlserver.py``.

    ``workers`` None keeps MLServer's default ``parallel_workers``; ``batching`` turns on
    adaptive batching (max_batch_size 32, max_batch_time 5 ms) for every model.
    """
    http, grpc, metrics = free_port(), free_port(), free_port()
    root.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "debug": False,  # True (the default) logs every request
        "grpc_max_message_length": 512 * 2**20,
        "metrics_dir": str(root / ".metrics"),
        "environments_dir": str(root / ".envs"),
    }
    if workers is not None:
        settings["parallel_workers"] = workers
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in models.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        entry: dict[str, object] = {
            "name": name,
            "implementation": "peers_mlserver.OnnxRuntimeModel",
            "parameters": {"uri": str(path)},
        }
        if batching:
            entry |= {"max_batch_size": 32, "max_batch_time": 0.005}
        (folder / "model-settings.json").write_text(json.dumps(entry, indent=2))
    mlserver = python.parent / "mlserver"
    env = dict(os.environ, PYTHONPATH=str(BENCH))
    env.pop("VIRTUAL_ENV", None)
    return Server(
        "mlserver", [str(mlserver), "start", str(root)], http, grpc, env=env, cwd=root, log=log
    )
