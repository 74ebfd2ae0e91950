"""The README's ``python`` and ``bash`` blocks run, in order, in a fresh home: docs never lie."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return [
        (lang, body)
        for lang, body in BLOCK.findall(README.read_text())
        if lang in ("python", "bash")
    ]


def test_readme_has_runnable_blocks() -> None:
    kinds = [lang for lang, _ in blocks()]
    assert kinds.count("python") >= 2
    assert kinds.count("bash") >= 1


@pytest.mark.slow
def test_readme_blocks_run(tmp_path: Path) -> None:
    env = {**os.environ, "MODELPORT_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for lang, body in blocks():
        if lang == "python":
            argv = [sys.executable, "-c", body]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", body]
        result = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, (
            f"README {lang} block failed:\n{body}\n{result.stdout}\n{result.stderr}"
        )
    # the quick start's promises hold
    final = subprocess.run(
        ["modelport", "ls", "iris", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"ref": "iris@2"' in final.stdout and '"ref": "iris@3"' in final.stdout
    assert '"ref": "iris@1"' not in final.stdout


def test_readme_serve_config_parses(tmp_path: Path) -> None:
    from modelport.serving.config import load_config

    (toml,) = [body for lang, body in BLOCK.findall(README.read_text()) if lang == "toml"]
    path = tmp_path / "serve.toml"
    path.write_text(toml)
    config = load_config(path)
    assert config.max_models == 4
    assert config.memory_budget == 8 * 2**30
    assert config.models["iris"].instances == 2
    assert config.model_settings("iris").response_cache_size == 10000
    assert config.models["resnet"].traffic == {2: 90, 3: 10}
    assert config.model_settings("resnet").max_batch_size == 32
