"""MODELPORT_VERIFY: when loading re-hashes a version's files against its manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport import Registry, Settings, VerificationFailed
from modelport.config import VerifyPolicy
from tests.onnx_models import make_add_model


def _swap_blob(home: Path, registry: Registry, replacement: Path) -> None:
    """Replace the stored bytes of `iris@1` with another *valid* model: only a hash can tell."""
    (entry,) = registry.get("m@1").files
    blob = home / "artifacts" / "blobs" / entry.digest[:2] / entry.digest
    blob.chmod(0o644)
    blob.write_bytes(replacement.read_bytes())


@pytest.mark.parametrize(
    ("policy", "second_load_fails"), [("always", True), ("first-load", False), ("never", False)]
)
def test_policies(
    home: Path, tmp_path: Path, policy: VerifyPolicy, second_load_fails: bool
) -> None:
    original = make_add_model(tmp_path / "a.onnx", shape=("batch", 3))
    impostor = make_add_model(tmp_path / "b.onnx", shape=("batch", 5))
    with Registry(Settings(home=home, verify=policy)) as registry:
        registry.push(original, "m")
        assert registry.load("m").signature.inputs[0].shape == (-1, 3)
        _swap_blob(home, registry, impostor)
        if second_load_fails:
            with pytest.raises(VerificationFailed, match="m@1: file 'a.onnx' does not match"):
                registry.load("m")
        else:
            # the tampering goes unseen in this process: that is what the policy trades away
            assert registry.load("m").signature.inputs[0].shape == (-1, 5)
        assert registry.verify("m@1")  # an explicit verify always tells


def test_env_variable_sets_the_policy(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_VERIFY", "first-load")
    assert Settings().verify == "first-load"
    monkeypatch.setenv("MODELPORT_VERIFY", "sometimes")
    with pytest.raises(ValueError, match="always"):
        Settings()


def test_cli_reports_a_bad_setting_in_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import run_cli

    monkeypatch.setenv("MODELPORT_VERIFY", "sometimes")
    result = run_cli("ls")
    assert result.returncode == 2
    assert result.stderr.startswith("error: MODELPORT_VERIFY: Input should be 'always'")
