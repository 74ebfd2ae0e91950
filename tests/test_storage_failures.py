"""A write that the disk refuses loses nothing and stores nothing."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np

from modelport import Registry, Settings
from tests.conftest import CLI, run_cli
from tests.onnx_models import make_matmul_model


def _limit_file_size(limit: int) -> None:
    # Like a full disk: writes past `limit` bytes fail (EFBIG) instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_push_onto_a_full_disk_fails_cleanly_and_stores_nothing(
    home: Path, iris_onnx: Path, tmp_path: Path
) -> None:
    assert run_cli("push", iris_onnx, "--name", "iris").returncode == 0  # the registry exists
    model = tmp_path / "big" / "model.onnx"
    make_matmul_model(model, np.ones((1024, 2048), np.float32))  # 8 MiB of weights
    proc = subprocess.run(
        [CLI, "push", str(model), "--name", "big"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
        preexec_fn=lambda: _limit_file_size(4 << 20),
        check=False,
    )
    assert proc.returncode == 9, proc.stderr
    assert proc.stderr.startswith("error: no space left for the artifact store")
    assert "nothing was stored" in proc.stderr
    assert proc.stderr.count("\n") == 1
    with Registry(Settings(home=home)) as registry:
        assert [m.name for m in registry.list_models()] == ["iris"]
        assert registry.verify("iris@1") == []
        assert registry.gc().blobs_removed == 0
    assert list((home / "artifacts" / "staging").iterdir()) == []


def test_unreadable_source_is_the_users_problem_not_the_stores(home: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    make_matmul_model(model_dir / "model.onnx", np.eye(2, dtype=np.float32), external_data="w.bin")
    (model_dir / "w.bin").chmod(0)
    if os.access(model_dir / "w.bin", os.R_OK):  # root reads anything: make it unreadable otherwise
        (model_dir / "w.bin").unlink()
        (model_dir / "w.bin").mkdir()
    result = run_cli("push", model_dir, "--name", "m")
    assert result.returncode == 6, result.stderr
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
