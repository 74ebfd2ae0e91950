"""What the benchmark scripts share: timed child processes, samples, machine facts, tables.

The scripts are run as ``python bench/NAME.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "SAMPLE_HEADER",
    "BenchError",
    "Run",
    "Samples",
    "cli_argv",
    "load_average",
    "machine_facts",
    "markdown_table",
    "run_timed",
    "stopwatch",
]


class BenchError(RuntimeError):
    """A measured command failed: the benchmark stops rather than report a wrong number."""


@dataclass
class Samples:
    """Repeated measurements of one thing: wall seconds and, for processes, peak RSS."""

    label: str
    seconds: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)

    def add(self, seconds: float, peak_rss: int | None = None) -> None:
        self.seconds.append(seconds)
        if peak_rss is not None:
            self.peak_rss.append(peak_rss)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    def row(self) -> list[str]:
        rss = f"{max(self.peak_rss) / 2**20:.0f}" if self.peak_rss else "-"
        return [
            self.label,
            f"{self.median:.3f}",
            f"{self.min:.3f}",
            f"{self.max:.3f}",
            rss,
            str(len(self.seconds)),
        ]


SAMPLE_HEADER = ["what", "median s", "min s", "max s", "peak RSS MiB", "n"]


@dataclass(frozen=True)
class Run:
    """One finished child process: wall seconds, peak RSS in bytes, what it printed."""

    seconds: float
    peak_rss: int
    stdout: bytes


def run_timed(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
    capture: bool = False,
) -> Run:
    """Run ``argv`` with stdout to /dev/null (or captured) and time it.

    The peak RSS is the child's own only if this process is small: Linux carries the
    parent's high-water mark over fork and exec, so the scripts keep models, onnx and
    modelport out of the measuring process and do in-process work in worker children.

    Raises:
        BenchError: the command exited non-zero or ran past ``timeout`` (it is killed).
    """
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryFile() as output:
        start = time.perf_counter()
        child = subprocess.Popen(
            argv, env=env, stdout=output if capture else subprocess.DEVNULL, stderr=errors
        )
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        try:
            # wait4 rather than wait: it gives this child's own resource usage.
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-3000:]
            raise BenchError(f"{' '.join(argv)} exited with {child.returncode}:\n{tail}")
        output.seek(0)
        return Run(wall, usage.ru_maxrss * 1024, output.read())


@contextmanager
def stopwatch(samples: Samples) -> Iterator[None]:
    """Add the wall time of the ``with`` body to ``samples``."""
    start = time.perf_counter()
    yield
    samples.add(time.perf_counter() - start)


def cli_argv() -> list[str]:
    """How to start the ``modelport`` command of the interpreter running this script."""
    script = Path(sys.executable).parent / "modelport"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "modelport"]


def _command_output(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine_facts(work_dir: Path) -> list[tuple[str, str]]:
    """What a reader needs to compare a run with theirs."""
    cpu = "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split()[1])  # the first line is MemTotal
        memory = f"{kib / 2**20:.1f} GiB"
    df = _command_output(["df", "-T", str(work_dir)]).splitlines()
    filesystem = " ".join(df[-1].split()[:2]) if len(df) > 1 else "?"
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("cpus", f"{os.cpu_count()} ({cpu})"),
        ("memory", memory),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("os", f"{platform.system()} {platform.release()}"),
        ("work dir", f"{work_dir} on {filesystem}"),
        ("packages", package_versions()),
        (
            "modelport tree",
            _command_output(
                ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"]
            ),
        ),
        ("load average", load_average()),
    ]


def package_versions() -> str:
    """Versions of the packages whose speed shows in the numbers (read without importing)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("onnx", "protobuf", "numpy", "sqlalchemy", "pydantic", "typer", "onnxruntime"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every number."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded so that it also reads as plain text."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
