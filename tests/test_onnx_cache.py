"""Shared ONNX weights: the optimized copy kept in a cache directory, against the real
onnxruntime. Outputs match the original bit for bit, the copy is built once and mapped, a
damaged copy is rebuilt, and the cache never makes a load fail."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport import Registry, Settings
from modelport.errors import InvalidModel
from modelport.registry.store import manifest_key
from modelport.runtimes import CheckedModel, LoadedModel, LoadOptions
from modelport.runtimes.onnx.inspect import signature
from modelport.runtimes.onnx.runtime import OnnxRuntime
from tests.onnx_models import (
    iris_data,
    make_add_model,
    make_conv_model,
    make_graph_model,
    make_iris_onnx,
    make_matmul_model,
    tensor,
)

RUNTIME = OnnxRuntime()
CACHE_LOGGER = "modelport.runtimes.onnx.shared_weights"


CONV_INPUT = {"x": np.random.default_rng(5).standard_normal((4, 3, 16, 16)).astype(np.float32)}


def load(path: Path, derived_dir: Path | None, **extra: Any) -> LoadedModel:
    return CheckedModel(RUNTIME.load(path, LoadOptions(derived_dir=derived_dir, extra=extra)))


def variant_dirs(derived_dir: Path) -> list[Path]:
    return sorted(path for path in derived_dir.glob("onnx-*") if path.is_dir())


def only_variant(derived_dir: Path) -> Path:
    (variant,) = variant_dirs(derived_dir)
    return variant


def assert_same_outputs(model: LoadedModel, reference: LoadedModel, inputs: dict[str, Any]) -> None:
    assert model.signature == reference.signature
    ours, theirs = model.predict(inputs), reference.predict(inputs)
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])


def drop(model: LoadedModel) -> None:
    # Let onnxruntime unmap the cached files before a test damages them.
    model.close()
    del model
    gc.collect()


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_conv_model(tmp_path_factory.mktemp("conv") / "conv.onnx")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iris_onnx(tmp_path_factory.mktemp("iris") / "iris.onnx")


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        LoadOptions(),
        LoadOptions(extra={"graph_optimization_level": "basic"}),
        LoadOptions(extra={"graph_optimization_level": "extended"}),
        LoadOptions(intra_op_threads=1, extra={"execution_mode": "parallel"}),
    ],
)
def test_conv_outputs_are_bit_identical(conv: Path, tmp_path: Path, options: LoadOptions) -> None:
    cached = CheckedModel(RUNTIME.load(conv, dataclasses.replace(options, derived_dir=tmp_path)))
    assert (only_variant(tmp_path) / "weights.bin").is_file()
    assert_same_outputs(cached, CheckedModel(RUNTIME.load(conv, options)), CONV_INPUT)


def test_iris_outputs_are_bit_identical(iris: Path, tmp_path: Path) -> None:
    features, _ = iris_data()
    assert_same_outputs(load(iris, tmp_path), load(iris, None), {"input": features})
    # Its weights are all under 1 KiB: nothing worth mapping, so the graph keeps them.
    assert sorted(p.name for p in only_variant(tmp_path).iterdir()) == [
        "manifest.json",
        "model.onnx",
    ]


def test_the_copy_is_built_once_then_reused_silently(
    conv: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    first = load(conv, tmp_path)
    variant = only_variant(tmp_path)
    files = {name: (variant / name).stat() for name in ("model.onnx", "weights.bin")}
    second = load(conv, tmp_path)
    for name, before in files.items():
        after = (variant / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert only_variant(tmp_path) == variant
    assert not list(tmp_path.glob(".tmp-*"))
    assert_same_outputs(first, second, CONV_INPUT)
    # The "hardware specific" warning onnxruntime logs when saving an NCHWc graph is muted.
    assert capfd.readouterr().err == ""
    assert caplog.records == []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux shows mappings there")
def test_the_weights_are_memory_mapped(conv: Path, tmp_path: Path) -> None:
    model = load(conv, tmp_path)
    weights = only_variant(tmp_path) / "weights.bin"
    assert str(weights) in Path("/proc/self/maps").read_text()
    model.predict(CONV_INPUT)


def test_optimization_disabled_uses_no_cache(conv: Path, tmp_path: Path) -> None:
    derived_dir = tmp_path / "cache"
    model = load(conv, derived_dir, graph_optimization_level="disable")
    assert not derived_dir.exists()
    assert_same_outputs(model, load(conv, None, graph_optimization_level="disable"), CONV_INPUT)


def test_each_optimization_level_has_its_own_copy(conv: Path, tmp_path: Path) -> None:
    load(conv, tmp_path, graph_optimization_level="basic")
    load(conv, tmp_path, graph_optimization_level="all")
    assert len(variant_dirs(tmp_path)) == 2


def test_external_data_in_the_original(tmp_path: Path) -> None:
    weights = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    path = make_matmul_model(tmp_path / "m" / "m.onnx", weights, external_data="data.bin")
    x = {"x": np.ones((2, 64), np.float32)}
    assert_same_outputs(load(path, tmp_path / "cache"), load(path, None), x)


def test_loads_at_once_build_one_copy(conv: Path, tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: load(conv, tmp_path), range(4)))
    only_variant(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))
    for model in models[1:]:
        assert_same_outputs(model, models[0], CONV_INPUT)


# --- damaged copies ---------------------------------------------------------------------------


def _truncate_weights(variant: Path) -> None:
    weights = variant / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:100])


def _garbage_graph_of_the_same_size(variant: Path) -> None:
    # Passes the size check; only onnxruntime's refusal tells it apart.
    graph = variant / "model.onnx"
    graph.write_bytes(np.random.default_rng(2).bytes(graph.stat().st_size))


def _garbage_graph(variant: Path) -> None:
    (variant / "model.onnx").write_bytes(b"not a model")


def _no_manifest(variant: Path) -> None:
    (variant / "manifest.json").unlink()


def _bad_manifest(variant: Path) -> None:
    (variant / "manifest.json").write_text('{"sizes": {"../../model.onnx": 1}}')


@pytest.mark.parametrize(
    "damage",
    [
        _truncate_weights,
        _garbage_graph_of_the_same_size,
        _garbage_graph,
        _no_manifest,
        _bad_manifest,
    ],
)
def test_a_damaged_copy_is_rebuilt(
    conv: Path, tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    drop(load(conv, tmp_path))
    variant = only_variant(tmp_path)
    damage(variant)
    model = load(conv, tmp_path)
    assert only_variant(tmp_path) == variant
    assert (variant / "weights.bin").stat().st_size > 100
    assert not list(tmp_path.glob(".tmp-*"))
    assert caplog.records == []
    assert_same_outputs(model, load(conv, None), CONV_INPUT)


def test_a_stale_build_left_by_a_killed_process_is_removed(conv: Path, tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-0123"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".tmp-4567"  # may be another process's build in progress: kept
    fresh.mkdir()
    load(conv, tmp_path)
    assert sorted(tmp_path.glob(".tmp-*")) == [fresh]


# --- the cache never makes a load fail --------------------------------------------------------


def test_a_cache_that_cannot_be_made_falls_back_with_a_warning(
    conv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    model = load(conv, not_a_directory / "cache")
    (record,) = caplog.records
    assert (record.name, record.levelno) == (CACHE_LOGGER, logging.WARNING)
    assert record.getMessage().startswith("conv.onnx: cannot share its weights through ")
    assert "Not a directory" in record.getMessage()
    assert_same_outputs(model, load(conv, None), CONV_INPUT)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_cache_falls_back_with_a_warning(
    conv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.chmod(0o500)
    try:
        model = load(conv, tmp_path)
    finally:
        tmp_path.chmod(0o700)
    (record,) = caplog.records
    assert record.name == CACHE_LOGGER
    assert "Permission denied" in record.getMessage()
    assert_same_outputs(model, load(conv, None), CONV_INPUT)


def test_a_full_disk_falls_back_with_a_warning(tmp_path: Path) -> None:
    # A real full disk, as far as onnxruntime can tell: writes past 4 MiB fail (EFBIG).
    weights = np.random.default_rng(4).standard_normal((1024, 2048)).astype(np.float32)
    path = make_matmul_model(tmp_path / "big" / "model.onnx", weights)  # 8 MiB of weights
    derived_dir = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from pathlib import Path
        from modelport.runtimes import LoadOptions
        from modelport.runtimes.onnx.runtime import OnnxRuntime
        from modelport.runtimes import CheckedModel
        model = CheckedModel(OnnxRuntime().load(Path({str(path)!r}), LoadOptions(derived_dir=Path({str(derived_dir)!r}))))
        y = model.predict({{"x": np.ones((1, 1024), np.float32)}})["y"]
        np.save({str(tmp_path / "y.npy")!r}, y)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("model.onnx: cannot share its weights through ")
    assert "Failed to write external initializers" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not list(derived_dir.glob(".tmp-*"))
    assert variant_dirs(derived_dir) == []
    expected = load(path, None).predict({"x": np.ones((1, 1024), np.float32)})["y"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


# --- the original is checked as before --------------------------------------------------------


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_a_corrupt_original_is_invalid_as_before(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_add_model(tmp_path / "good.onnx").read_bytes()
    content = {
        "random": np.random.default_rng(7).bytes(2048),
        "truncated": good[: len(good) // 2],
    }[damage]
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    _assert_same_refusal(path, tmp_path / "cache")
    assert caplog.records == []


def test_a_graph_onnxruntime_refuses_is_invalid_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Parses, so only onnxruntime refuses it: first while building the copy, then as before.
    path = make_graph_model(
        tmp_path / "dangling.onnx",
        [helper.make_node("Add", ["a", "nowhere"], ["sum"])],
        [tensor("a", TensorProto.FLOAT, [1])],
        [tensor("sum", TensorProto.FLOAT, [1])],
    )
    _assert_same_refusal(path, tmp_path / "cache")
    assert caplog.records == []
    assert variant_dirs(tmp_path / "cache") == []


def _assert_same_refusal(path: Path, derived_dir: Path) -> None:
    with pytest.raises(InvalidModel) as plain:
        load(path, None)
    with pytest.raises(InvalidModel) as cached:
        load(path, derived_dir)
    assert str(cached.value) == str(plain.value)


def test_the_signature_is_the_originals(tmp_path: Path) -> None:
    # onnxruntime writes the shapes it inferred into the optimized graph (here y's); callers
    # see what the model declares.
    path = make_graph_model(
        tmp_path / "shapes.onnx",
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Identity", ["h"], ["y"]),
        ],
        [tensor("x", TensorProto.FLOAT, ["rows", 16])],
        [tensor("y", TensorProto.FLOAT, None)],
        initializers=[numpy_helper.from_array(np.ones((16, 64), np.float32), "w")],
    )
    declared = load(path, None).signature
    assert load(path, tmp_path / "cache").signature == declared
    derived = only_variant(tmp_path / "cache") / "model.onnx"
    assert signature(onnx.load(str(derived), load_external_data=False)) != declared


# --- through the registry ---------------------------------------------------------------------


def test_registry_keeps_the_copy_in_the_store_and_gc_removes_it(tmp_path: Path, conv: Path) -> None:
    with Registry(Settings(home=tmp_path / "home")) as registry:
        version = registry.push(conv, "conv")
        key = manifest_key(version.files)
        derived = registry.checkout.root / "derived" / key
        model = registry.load("conv")
        assert (only_variant(derived) / "weights.bin").is_file()
        assert_same_outputs(model, load(conv, None), CONV_INPUT)

        explicit = tmp_path / "mine"
        registry.load("conv", LoadOptions(derived_dir=explicit))
        only_variant(explicit)

        with registry.store.writing():  # a push in progress: delete leaves gc for later
            registry.delete("conv@1")
        assert derived.is_dir()
        report = registry.gc()
        assert report.derived_removed == 1
        assert report.checkouts_removed == 1
        assert not derived.exists()
        assert not (registry.checkout.root / "checkouts" / key).exists()
