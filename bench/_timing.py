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
    "Samples",
    "cli_argv",
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


def run_timed(
    argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600.0
) -> tuple[float, int]:
    """Run ``argv`` with stdout to /dev/null; return (wall seconds, peak RSS in bytes).

    Raises:
        BenchError: the command exited non-zero or ran past ``timeout`` (it is killed).
    """
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        try:
            # wait4 rather than wait: it gives this child's own peak RSS.
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-3000:]
            raise BenchError(f"{' '.join(argv)} exited with {child.returncode}:\n{tail}")
    return wall, usage.ru_maxrss * 1024


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
    df = _command_output(["df", "-T", str(work_dir)]).splitlines()
    filesystem = " ".join(df[-1].split()[:2]) if len(df) > 1 else "?"
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("cpus", f"{os.cpu_count()} ({cpu})"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("os", f"{platform.system()} {platform.release()}"),
        ("work dir", f"{work_dir} on {filesystem}"),
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded so that it also reads as plain text."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
