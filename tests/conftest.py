"""Shared fixtures: a fresh modelport home per test, real models on disk, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelport import Registry, Settings
from tests.onnx_models import make_iris_onnx
from tests.postgres import make_postgres_database  # noqa: F401  (a fixture)
from tests.tls_certs import tls_files  # noqa: F401  (a fixture)

CLI = str(Path(sys.executable).parent / "modelport")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MODELPORT_HOME, also set in the environment for the CLI."""
    path = tmp_path / "home"
    monkeypatch.setenv("MODELPORT_HOME", str(path))
    monkeypatch.delenv("MODELPORT_DB_URL", raising=False)
    for variable in ("STORE_PATH", "STORE_URL", "S3_ENDPOINT_URL", "CACHE_PATH", "GC_GRACE"):
        monkeypatch.delenv(f"MODELPORT_{variable}", raising=False)
    monkeypatch.delenv("MODELPORT_VERIFY", raising=False)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The metadata DB of a test that runs once per backend.

    SQLite is the default file under ``home``; PostgreSQL is a fresh database, also set as
    MODELPORT_DB_URL so that the CLI and other processes the test starts use it too.
    """
    if request.param == "sqlite":
        return Settings(home=home).resolved_db_url()
    url: str = request.getfixturevalue("make_postgres_database")()
    monkeypatch.setenv("MODELPORT_DB_URL", url)
    return url


@pytest.fixture
def registry(home: Path, db_url: str) -> Iterator[Registry]:
    with Registry(Settings(home=home, db_url=db_url)) as reg:
        yield reg


@pytest.fixture(scope="session")
def iris_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn iris classifier as ONNX: input ``input`` FP32 [-1, 4]."""
    return make_iris_onnx(tmp_path_factory.mktemp("iris") / "iris.onnx", zipmap=False)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 120) -> CliResult:
    """Run the installed ``modelport`` entry point in a subprocess, as a user would."""
    proc = subprocess.run(
        [CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
