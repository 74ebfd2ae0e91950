"""Several processes at once: concurrent pushes, readers during writes, a push killed mid-copy."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelport import NotFound, Registry, Settings
from tests.conftest import CLI, run_cli
from tests.onnx_models import make_matmul_model

PUSHER = """
import sys, time
from modelport import Registry, Settings
home, model, start, count, worker = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
with Registry(Settings(home=home)) as registry:
    while time.time() < start:
        time.sleep(0.001)
    for i in range(count):
        registry.push(model, "shared", tags={"worker": worker, "i": str(i)})
"""


# The pushing processes find the DB through MODELPORT_DB_URL, which db_url sets.
@pytest.mark.usefixtures("db_url")
def test_concurrent_pushes_all_succeed_with_distinct_versions(home: Path, iris_onnx: Path) -> None:
    workers, each = 4, 5
    start = time.time() + 2.0  # every process has opened the (new) DB by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PUSHER,
                str(home),
                str(iris_onnx),
                str(start),
                str(each),
                str(w),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with Registry(Settings(home=home)) as registry:
        versions = registry.list_versions("shared")
        assert [v.version for v in versions] == list(range(1, workers * each + 1))
        pushed = {(v.tags["worker"], v.tags["i"]) for v in versions}
        assert pushed == {(str(w), str(i)) for w in range(workers) for i in range(each)}


@pytest.mark.usefixtures("db_url")
def test_two_cli_pushes_at_once_on_a_fresh_home(home: Path, iris_onnx: Path) -> None:
    procs = [
        subprocess.Popen(
            [CLI, "push", str(iris_onnx), "--name", "iris"], stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    versions = run_cli("ls", "iris", "--json")
    assert '"version": 1' in versions.stdout and '"version": 2' in versions.stdout


def test_concurrent_metric_merges_and_alias_moves_lose_nothing(
    registry: Registry, iris_onnx: Path
) -> None:
    registry.push(iris_onnx, "iris")
    registry.push(iris_onnx, "iris")

    def write(i: int) -> None:
        registry.set_metrics("iris@1", {f"m{i}": i})
        registry.set_alias(f"iris@{1 + i % 2}", "production")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(40)))  # re-raises any worker's error
    assert registry.get("iris@1").metrics == {f"m{i}": i for i in range(40)}
    assert registry.get("iris@production").version in (1, 2)


def test_readers_see_whole_versions_while_others_delete(
    registry: Registry, iris_onnx: Path
) -> None:
    def push_and_delete() -> None:
        for _ in range(40):
            registry.delete(registry.push(iris_onnx, "churn").ref)

    reads = 0
    with ThreadPoolExecutor(1) as pool:
        writer = pool.submit(push_and_delete)
        while not writer.done():
            with contextlib.suppress(NotFound):  # between the first push and the model
                for version in registry.list_versions("churn"):
                    assert version.files, f"{version.ref} was read without its files"
                    reads += 1
        writer.result()
    assert reads > 0


def _big_model(directory: Path, megabytes: int) -> Path:
    """A directory model: a small ONNX graph plus a large side file, copied like any other."""
    make_matmul_model(directory / "model.onnx", np.eye(2, dtype=np.float32))
    with (directory / "vocab.bin").open("wb") as handle:
        block = np.random.default_rng(0).bytes(1 << 20)
        for _ in range(megabytes):
            handle.write(block)
    return directory


@pytest.mark.slow
def test_push_killed_mid_copy_leaves_nothing_gc_cannot_clean(home: Path, tmp_path: Path) -> None:
    model = _big_model(tmp_path / "big", 300)
    staging = home / "artifacts" / "staging"
    proc = subprocess.Popen([CLI, "push", str(model), "--name", "big"])
    deadline = time.monotonic() + 60
    # Kill as soon as bytes are landing in the store: the copy is under way.
    while time.monotonic() < deadline:
        partial = (
            [p for p in staging.glob("*/*") if p.stat().st_size > 0] if staging.exists() else []
        )
        if partial:
            break
        time.sleep(0.002)
    else:
        pytest.fail("the push never started copying")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    with Registry(Settings(home=home)) as registry:
        assert registry.list_models() == []  # no half version visible
        report = registry.gc()
        assert report.staging_removed == 1
    assert list(staging.iterdir()) == []
    assert list((home / "artifacts" / "blobs").glob("*/*")) == []

    # the store works normally afterwards
    assert run_cli("push", model, "--name", "big").returncode == 0
    assert run_cli("verify", "big@1").returncode == 0


@pytest.mark.slow
def test_kills_at_any_moment_leave_all_or_nothing(home: Path, tmp_path: Path) -> None:
    model = _big_model(tmp_path / "big", 40)
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5):
        proc = subprocess.Popen(
            [CLI, "push", str(model), "--name", "big"], stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=10)
        with Registry(Settings(home=home)) as registry:
            for summary in registry.list_models():
                for version in registry.list_versions(summary.name):
                    assert registry.verify(version.ref) == []  # a visible version is whole
            registry.gc()
            referenced = {
                f.digest
                for m in registry.list_models()
                for v in registry.list_versions(m.name)
                for f in v.files
            }
        stored = {p.name for p in (home / "artifacts" / "blobs").glob("*/*")}
        assert stored == referenced
        assert list((home / "artifacts" / "staging").iterdir()) == []


@pytest.mark.usefixtures("db_url")
def test_readers_never_see_a_half_written_version(home: Path, iris_onnx: Path) -> None:
    start = time.time() + 1.5
    writer = subprocess.Popen(
        [sys.executable, "-c", PUSHER, str(home), str(iris_onnx), str(start), "15", "w"],
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = 0
    with Registry(Settings(home=home)) as registry:
        while writer.poll() is None:
            try:
                versions = registry.list_versions("shared")
            except Exception:
                continue
            for version in versions:
                assert version.files and version.signature.inputs  # complete record
                assert version.tags["worker"] == "w"
            seen = max(seen, len(versions))
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert seen >= 1
