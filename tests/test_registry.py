"""The Registry facade, through the public SDK, on a real SQLite DB and local store."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from modelport import (
    Conflict,
    InvalidInput,
    InvalidModel,
    InvalidName,
    Lineage,
    NotFound,
    Registry,
    Settings,
    UnsupportedFormat,
    VerificationFailed,
)
from tests.onnx_models import iris_classifier, iris_data, make_add_model, make_matmul_model


def test_push_records_everything(registry: Registry, iris_onnx: Path) -> None:
    version = registry.push(
        iris_onnx,
        "iris",
        aliases=["production"],
        tags={"team": "vision"},
        description="Iris classifier",
    )
    assert version.ref == "iris@1"
    assert version.format == "onnx"
    assert version.aliases == ("production",)
    assert version.tags == {"team": "vision"}
    assert version.description == "Iris classifier"
    assert version.size == iris_onnx.stat().st_size
    assert [f.path for f in version.files] == ["iris.onnx"]
    assert version.signature.inputs[0].name == "input"
    assert version.signature.inputs[0].shape == (-1, 4)
    assert not version.trust_pickle
    assert version.lineage == Lineage()
    assert version.created_at.tzinfo is UTC
    assert abs(datetime.now(UTC) - version.created_at) < timedelta(minutes=5)
    (summary,) = registry.list_models()
    assert summary.created_at.tzinfo is UTC and summary.updated_at == version.created_at
    assert version.to_dict()["created_at"].endswith("+00:00")


def test_versions_count_up_and_refs_resolve(registry: Registry, iris_onnx: Path) -> None:
    for _ in range(3):
        registry.push(iris_onnx, "iris")
    registry.set_alias("iris@2", "production")
    assert registry.get("iris").version == 3
    assert registry.get("iris@latest").version == 3
    assert registry.get("iris@1").version == 1
    assert registry.get("iris@production").version == 2
    assert [v.version for v in registry.list_versions("iris")] == [1, 2, 3]
    (summary,) = registry.list_models()
    assert (summary.name, summary.versions, summary.latest) == ("iris", 3, 3)
    assert summary.aliases == {"production": 2}


def test_version_numbers_are_never_reused(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris")
    registry.push(iris_onnx, "iris")
    registry.delete("iris@2")
    assert registry.push(iris_onnx, "iris").version == 3


def test_load_and_predict_matches_scikit_learn(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris", aliases=["production"])
    model = registry.load("iris@production")
    features, _ = iris_data()
    outputs = model.predict({"input": features})
    label = model.signature.outputs[0].name
    np.testing.assert_array_equal(outputs[label], iris_classifier().predict(features))
    model.close()


def test_lineage_and_metrics(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris")
    child = registry.push(
        iris_onnx,
        "iris-small",
        lineage=Lineage(parent="iris@1", operation="quantize", parameters={"bits": 8}),
        metrics={"accuracy": 0.97},
    )
    assert child.lineage == Lineage("iris@1", "quantize", {"bits": 8})
    assert child.metrics == {"accuracy": 0.97}
    updated = registry.set_metrics("iris-small@1", {"f1": 0.9})
    assert updated.metrics == {"accuracy": 0.97, "f1": 0.9}
    with pytest.raises(NotFound, match="no model named 'nope'"):
        registry.push(iris_onnx, "x", lineage=Lineage(parent="nope@1", operation="convert"))
    with pytest.raises(InvalidInput, match="JSON-serialisable"):
        registry.set_metrics("iris@1", {"bad": object()})


def test_aliases_move_and_delete(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris", aliases=["production"])
    registry.push(iris_onnx, "iris")
    assert registry.set_alias("iris@2", "production").version == 2
    assert registry.get("iris@1").aliases == ()
    registry.delete_alias("iris", "production")
    with pytest.raises(NotFound, match="has no alias 'production'; it has none"):
        registry.get("iris@production")
    with pytest.raises(NotFound, match="has no alias"):
        registry.delete_alias("iris", "production")


def test_not_found_messages_suggest(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris", aliases=["production"])
    with pytest.raises(NotFound, match=r"no model named 'irsi'; did you mean 'iris'\?"):
        registry.get("irsi")
    with pytest.raises(NotFound, match=r"has no version 7; latest is 1 \(versions: 1\)"):
        registry.get("iris@7")
    with pytest.raises(NotFound, match="did you mean 'production'"):
        registry.get("iris@prodution")
    with pytest.raises(NotFound, match="no model named 'zzz'$"):
        registry.get("zzz")


def test_delete_refuses_aliased_version_unless_forced(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris", aliases=["production"])
    with pytest.raises(Conflict, match="alias production points at"):
        registry.delete("iris@1")
    assert registry.get("iris@1")
    registry.delete("iris@1", force=True)
    with pytest.raises(NotFound, match="has no versions"):
        registry.get("iris")
    with pytest.raises(InvalidInput, match="say which version"):
        registry.delete("iris")


def test_delete_model(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris", aliases=["production"])
    registry.push(iris_onnx, "iris")
    with pytest.raises(Conflict):
        registry.delete_model("iris")
    assert len(registry.delete_model("iris", force=True)) == 2
    assert registry.list_models() == []


def test_identical_files_are_stored_once(registry: Registry, iris_onnx: Path, home: Path) -> None:
    for name in ("a", "b", "c"):
        registry.push(iris_onnx, name)
    blobs = list((home / "artifacts" / "blobs").glob("*/*"))
    assert len(blobs) == 1


def test_push_of_directory_with_external_data(registry: Registry, tmp_path: Path) -> None:
    weights = np.arange(12, dtype=np.float32).reshape(4, 3)
    model_dir = tmp_path / "mm"
    make_matmul_model(model_dir / "model.onnx", weights, external_data="weights.bin")
    (model_dir / "README.txt").write_text("notes")
    version = registry.push(model_dir, "mm")
    assert [f.path for f in version.files] == ["README.txt", "model.onnx", "weights.bin"]
    assert version.entry == "model.onnx"
    model = registry.load("mm")
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(model.predict({"x": x})["y"], x @ weights)


def test_push_of_single_file_brings_its_external_data(registry: Registry, tmp_path: Path) -> None:
    weights = np.eye(3, dtype=np.float32)
    make_matmul_model(tmp_path / "m" / "model.onnx", weights, external_data="w.bin")
    (tmp_path / "m" / "unrelated.txt").write_text("not part of the model")
    version = registry.push(tmp_path / "m" / "model.onnx", "mm")
    assert [f.path for f in version.files] == ["model.onnx", "w.bin"]
    shutil.rmtree(tmp_path / "m")  # the registry must not depend on the source any more
    out = registry.load("mm").predict({"x": np.ones((1, 3), np.float32)})
    np.testing.assert_allclose(out["y"], [[1, 1, 1]])


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: p.write_bytes(b""), InvalidModel, "empty file"),
        (lambda p: p.write_bytes(b"\x08\x07garbage\xff\xff\xff"), InvalidModel, "not a valid ONNX"),
        (
            lambda p: p.with_suffix(".bin").write_bytes(b"abc"),
            UnsupportedFormat,
            "supported formats: .*onnx",
        ),
    ],
)
def test_bad_files_store_nothing(
    registry: Registry, tmp_path: Path, home: Path, make, error, message
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.onnx"
    make(path)
    target = path if path.exists() else path.with_suffix(".bin")
    with pytest.raises(error, match=message):
        registry.push(target, "bad")
    assert registry.list_models() == []
    assert list((home / "artifacts" / "blobs").glob("*/*")) == []
    assert list((home / "artifacts" / "staging").iterdir()) == []


def test_truncated_model_is_refused(registry: Registry, iris_onnx: Path, tmp_path: Path) -> None:
    data = iris_onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel):
        registry.push(truncated, "iris")
    assert registry.list_models() == []


def test_directory_without_a_model(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModel, match="empty directory"):
        registry.push(tmp_path / "empty", "x")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    with pytest.raises(
        UnsupportedFormat, match="directory with no model in it; supported formats: .*onnx"
    ):
        registry.push(tmp_path / "stuff", "x")
    with pytest.raises(InvalidModel, match="does not exist"):
        registry.push(tmp_path / "missing.onnx", "x")


@pytest.mark.parametrize("name", ["../evil", "a/b", "a..b", "x" * 129, "bad\nname", ""])
def test_invalid_names_store_nothing(registry: Registry, iris_onnx: Path, name: str) -> None:
    with pytest.raises(InvalidName):
        registry.push(iris_onnx, name)
    assert registry.list_models() == []


def test_external_data_outside_the_model_directory_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    from tests.onnx_models import set_external_location

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(9, np.float32).tobytes())
    model = make_matmul_model(
        tmp_path / "m" / "model.onnx", np.eye(3, dtype=np.float32), external_data="w.bin"
    )
    set_external_location(model, "../secret.bin")
    with pytest.raises(InvalidModel, match="outside the model directory"):
        registry.push(model, "evil")
    assert registry.list_models() == []


def test_tampering_is_detected_on_verify_and_load(
    registry: Registry, iris_onnx: Path, home: Path
) -> None:
    version = registry.push(iris_onnx, "iris")
    assert registry.verify("iris@1") == []
    blob = home / "artifacts" / "blobs" / version.files[0].digest[:2] / version.files[0].digest
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    (problem,) = registry.verify("iris@1")
    assert "iris.onnx: content changed" in problem
    with pytest.raises(VerificationFailed, match="does not match its manifest"):
        registry.load("iris@1")
    # never verifying is a user's explicit choice
    with pytest.raises(InvalidModel):
        registry.load("iris@1", verify="never")  # the damaged bytes no longer parse


@pytest.mark.usefixtures("db_url")  # in MODELPORT_DB_URL, which Settings reads
def test_first_load_verifies_once_per_process(home: Path, iris_onnx: Path) -> None:
    with Registry(Settings(home=home, verify="first-load")) as registry:
        version = registry.push(iris_onnx, "iris")
        registry.load("iris").close()
        blob = home / "artifacts" / "blobs" / version.files[0].digest[:2] / version.files[0].digest
        assert blob.exists()
        registry.load("iris").close()


def test_gc_removes_what_no_version_references(
    registry: Registry, iris_onnx: Path, tmp_path: Path, home: Path
) -> None:
    registry.push(iris_onnx, "iris")
    other = make_add_model(tmp_path / "add.onnx")
    registry.push(other, "add")
    registry.load("add").close()  # makes a checkout
    store = home / "artifacts"
    orphan = store / "blobs" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a push killed between publish and commit")
    (store / "staging" / "deadbeef").mkdir()
    report = registry.gc()
    assert report.blobs_removed == 1
    assert report.staging_removed == 1
    assert not orphan.exists()
    assert registry.verify("iris") == [] and registry.verify("add") == []
    registry.delete_model("add")
    assert len(list((store / "blobs").glob("*/*"))) == 1
    assert list((store / "checkouts").iterdir()) == []


def test_db_url_setting_points_elsewhere(tmp_path: Path, iris_onnx: Path) -> None:
    settings = Settings(home=tmp_path / "h", db_url=f"sqlite:///{tmp_path / 'other.db'}")
    with Registry(settings) as registry:
        registry.push(iris_onnx, "iris")
    assert (tmp_path / "other.db").exists()
    assert not (tmp_path / "h" / "registry.db").exists()
    with Registry(settings) as registry:
        assert registry.get("iris").version == 1
