"""Ways to lose or misserve stored models, each closed (issue 9): gc racing a push, a lost
database taken for a new one, a derived copy served unverified, pushes that hang or store
models that can never load, and errors that break the CLI's one-line promise."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport import Registry, Settings, StorageError
from tests.conftest import CLI, CliResult, run_cli
from tests.onnx_models import (
    make_add_model,
    make_graph_model,
    make_matmul_model,
    set_external_field,
    tensor,
)
from tests.serving_fixtures import running_server

DEADLINE = 60.0  # seconds; generous for a loaded 2-core machine


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``DEADLINE``."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink() == path:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def blobs(home: Path) -> list[Path]:
    return sorted((home / "artifacts" / "blobs").glob("*/*"))


def one_line_error(result: CliResult, code: int, *phrases: str) -> None:
    """The CLI failed with exit ``code`` and one ``error:`` line that says ``phrases``."""
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# --- item 2: gc during a push -------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches gc through /proc")
def test_gc_keeps_a_push_that_commits_while_gc_waits_for_the_store(
    home: Path, db_url: str, tmp_path: Path
) -> None:
    settings = Settings(home=home, db_url=db_url)
    late = make_add_model(tmp_path / "late.onnx", shape=("batch", 5))
    with Registry(settings) as registry:
        registry.push(make_add_model(tmp_path / "early.onnx"), "early")
        lock = registry.checkout.root / "gc.lock"
        with registry.store.writing():  # what a push holds until its commit
            gc = subprocess.Popen(
                [CLI, "gc"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            try:
                # gc opens the lock file only to wait on it: from here on it is waiting.
                wait_for(
                    lambda: gc.poll() is not None or has_open(gc.pid, lock),
                    "gc to wait for the store's lock",
                )
                assert gc.poll() is None, gc.communicate()
                registry.push(late, "late")  # publishes and commits meanwhile
            except BaseException:
                gc.kill()
                gc.wait()
                raise
        stdout, stderr = gc.communicate(timeout=DEADLINE)
        assert gc.returncode == 0, stderr
        assert "removed 0 blob(s)" in stdout
        assert registry.verify("late@1") == []
        inputs = {"a": np.ones((1, 5), np.float32), "b": np.ones((1, 5), np.float32)}
        assert registry.load("late").predict(inputs)["sum"].tolist() == [[2.0] * 5]


# --- item 3: a lost database is not a new registry ----------------------------------------------


def _lose_sqlite_database(home: Path) -> None:
    """A registry.db truncated to 0 bytes, as a full disk or a bad restore leaves it."""
    for suffix in ("-wal", "-shm"):
        (home / f"registry.db{suffix}").unlink(missing_ok=True)
    (home / "registry.db").write_bytes(b"")


def test_an_empty_database_over_stored_models_is_refused(
    home: Path, iris_onnx: Path, tmp_path: Path
) -> None:
    assert run_cli("push", iris_onnx, "--name", "iris").returncode == 0
    stored = blobs(home)
    _lose_sqlite_database(home)
    for args in (["ls"], ["gc"], ["push", iris_onnx, "--name", "iris"], ["show", "iris"]):
        one_line_error(run_cli(*args), 9, "registry.db is empty", "Restore it from a backup")
    with pytest.raises(StorageError, match="holds stored models"):
        Registry(Settings(home=home))
    assert blobs(home) == stored
    with contextlib.closing(sqlite3.connect(home / "registry.db")) as lost:
        assert lost.execute("SELECT name FROM sqlite_master").fetchall() == []  # left as it was


def test_an_empty_database_over_an_empty_store_is_a_new_registry(
    home: Path, iris_onnx: Path
) -> None:
    home.mkdir()
    (home / "registry.db").write_bytes(b"")
    assert run_cli("ls").stdout.startswith("no models yet")
    assert run_cli("push", iris_onnx, "--name", "iris").returncode == 0
    # Everything collected: the store is empty again, and so may start afresh.
    assert run_cli("rm", "iris", "--all").returncode == 0
    assert blobs(home) == []
    _lose_sqlite_database(home)
    assert run_cli("ls").returncode == 0


def test_an_empty_postgresql_database_over_stored_models_is_refused(
    home: Path, iris_onnx: Path, make_postgres_database: Callable[[], str]
) -> None:
    with Registry(Settings(home=home, db_url=make_postgres_database())) as registry:
        registry.push(iris_onnx, "iris")
    stored = blobs(home)
    empty = make_postgres_database()
    with pytest.raises(StorageError, match="is empty.*Restore it from a backup") as refused:
        Registry(Settings(home=home, db_url=empty))
    assert "\n" not in str(refused.value)
    assert blobs(home) == stored


# --- item 12b: one line for a damaged database --------------------------------------------------


def test_a_damaged_database_is_one_line_and_exit_9(home: Path) -> None:
    home.mkdir()
    (home / "registry.db").write_bytes(b"this is not a database, just garbage bytes\n" * 100)
    result = run_cli("ls")
    one_line_error(result, 9, "cannot open the registry database", "file is not a database")
    assert "sqlalche.me" not in result.stderr


# --- item 12c: a missing blob is damage, not a refused write ------------------------------------


def test_a_blob_missing_from_the_store_is_verification_failed(home: Path, iris_onnx: Path) -> None:
    assert run_cli("push", iris_onnx, "--name", "iris").returncode == 0
    (blob,) = blobs(home)
    blob.unlink()
    result = run_cli("predict", "iris", "--input", '{"input": [[1, 2, 3, 4]]}')
    one_line_error(result, 7, "missing from the artifact store", "modelport verify")


# --- risk: version numbers never repeat, even after `rm NAME --all` -----------------------------


def test_numbers_are_not_reused_after_the_whole_model_is_deleted(
    registry: Registry, iris_onnx: Path
) -> None:
    for _ in range(3):
        registry.push(iris_onnx, "iris", aliases=["production"])
    registry.push(iris_onnx, "other")
    registry.delete_model("iris", force=True)
    assert [m.name for m in registry.list_models()] == ["other"]
    assert registry.push(iris_onnx, "iris").version == 4
    assert [v.version for v in registry.list_versions("iris")] == [4]
    (summary,) = (m for m in registry.list_models() if m.name == "iris")
    assert (summary.versions, summary.latest) == (1, 4)
    registry.delete_model("iris")
    registry.delete_model("other")
    assert registry.list_models() == []
    assert registry.push(iris_onnx, "iris").version == 5
    assert registry.push(iris_onnx, "other").version == 2


def test_cli_rm_all_then_push_goes_on_counting(home: Path, iris_onnx: Path) -> None:
    for _ in range(3):
        assert run_cli("push", iris_onnx, "--name", "iris", "--alias", "prod").returncode == 0
    assert run_cli("rm", "iris", "--all", "--force").returncode == 0
    assert json.loads(run_cli("ls", "--json").stdout) == []
    pushed = run_cli("push", iris_onnx, "--name", "iris", "--json")
    assert json.loads(pushed.stdout)["version"] == 4


# --- item 9: a push never hangs on a named pipe or a device -------------------------------------


def _fifo_as_the_model(root: Path) -> list[Path]:
    os.mkfifo(root / "model.onnx")
    return [root / "model.onnx"]


def _symlink_to_a_fifo(root: Path) -> list[Path]:
    os.mkfifo(root / "pipe")
    (root / "model.onnx").symlink_to(root / "pipe")
    return [root / "model.onnx"]


def _fifo_inside_the_directory(root: Path) -> list[Path]:
    make_add_model(root / "m" / "model.onnx")
    os.mkfifo(root / "m" / "weights.bin")
    return [root / "m"]


def _device_inside_the_directory(root: Path) -> list[Path]:
    make_add_model(root / "m" / "model.onnx")
    (root / "m" / "extra").mkdir()
    (root / "m" / "extra" / "null").symlink_to("/dev/null")
    return [root / "m"]


def _fifo_as_a_companion(root: Path) -> list[Path]:
    os.mkfifo(root / "weights.caffemodel")
    return [make_add_model(root / "model.onnx"), root / "weights.caffemodel"]


@pytest.mark.parametrize(
    ("layout", "says"),
    [
        (_fifo_as_the_model, "model.onnx is a named pipe (FIFO), not a model file or directory"),
        (_symlink_to_a_fifo, "model.onnx is a named pipe (FIFO)"),
        (_fifo_inside_the_directory, "m: weights.bin is a named pipe (FIFO); a model directory"),
        (_device_inside_the_directory, "m: extra/null is a character device"),
        (_fifo_as_a_companion, "weights.caffemodel is a named pipe (FIFO)"),
    ],
)
def test_push_refuses_what_is_neither_a_file_nor_a_directory(
    home: Path, tmp_path: Path, layout: Callable[[Path], list[Path]], says: str
) -> None:
    paths = layout(tmp_path)
    try:
        result = run_cli("push", *paths, "--name", "m", timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail("push hung on a named pipe")
    one_line_error(result, 6, says)
    assert not (home / "artifacts" / "blobs").exists() or blobs(home) == []


# --- item 10: models that could never load are refused at push ----------------------------------

WEIGHTS = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)  # 8 KiB: external data


def _external(tmp_path: Path, key: str, value: str) -> Path:
    path = make_matmul_model(tmp_path / "m" / "m.onnx", WEIGHTS, external_data="w.bin")
    set_external_field(path, key, value)
    return path.parent


def _graph(
    tmp_path: Path, nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str]
) -> Path:
    def spec(name: str) -> onnx.ValueInfoProto:
        return tensor(name, TensorProto.FLOAT, ["batch", 2])

    return make_graph_model(
        tmp_path / "g.onnx", nodes, [spec(n) for n in inputs], [spec(n) for n in outputs]
    )


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda t: _external(t, "offset", "-16"), "has a negative offset or length (-16, 8192)"),
        (lambda t: _external(t, "length", "-4"), "has a negative offset or length (0, -4)"),
        (lambda t: _external(t, "offset", "4096"), "needs bytes 4096 to 12288, but the file is"),
        (lambda t: _external(t, "length", "100"), "length of 100 bytes, but the tensor holds 8192"),
        (lambda t: _external(t, "offset", "x1"), "has a malformed offset or length"),
        (
            lambda t: _graph(t, [helper.make_node("Identity", ["x"], ["y"])], ["x"], []),
            "g.onnx: the graph has no outputs, so it can never answer a request",
        ),
        (lambda t: _graph(t, [], [], []), "g.onnx: the graph has no outputs"),
    ],
)
def test_push_refuses_a_model_that_can_never_load(
    home: Path, tmp_path: Path, build: Callable[[Path], Path], says: str
) -> None:
    result = run_cli("push", build(tmp_path), "--name", "m")
    one_line_error(result, 6, says)
    assert blobs(home) == []


def test_graphs_without_nodes_or_inputs_still_push_and_answer(home: Path, tmp_path: Path) -> None:
    # Not refused: onnxruntime runs them (a pass-through, a constant).
    passthrough = _graph(tmp_path, [], ["x"], ["x"])
    assert run_cli("push", passthrough, "--name", "passthrough").returncode == 0
    result = run_cli("predict", "passthrough", "--input", '{"x": [[1, 2]]}')
    assert json.loads(result.stdout) == {"x": [[1.0, 2.0]]}
    constant = make_graph_model(
        tmp_path / "constant.onnx",
        [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2, "f4")))],
        [],
        [tensor("y", TensorProto.FLOAT, [2])],
    )
    assert run_cli("push", constant, "--name", "constant").returncode == 0
    result = run_cli("predict", "constant", "--input", "{}")
    assert json.loads(result.stdout) == {"y": [1.0, 1.0]}


# --- item 7: what is served is what was verified -----------------------------------------------

X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
EXPECTED = (X @ WEIGHTS).tolist()


def _served_weights(home: Path) -> Path:
    """The weights file onnxruntime maps: the derived, optimized copy's, not the blob."""
    (weights,) = (home / "artifacts" / "derived").glob("*/onnx-*/weights.bin")
    return weights


def _tamper_keeping_the_size(weights: Path) -> None:
    weights.write_bytes(bytes(weights.stat().st_size))  # every weight 0.0


def _predict_cli() -> CliResult:
    return run_cli("predict", "m", "--input", json.dumps({"x": X.tolist()}))


@pytest.fixture
def served_once(home: Path, tmp_path: Path) -> Path:
    """``m@1`` pushed and predicted once, so that its optimized copy exists; then tampered."""
    model = make_matmul_model(tmp_path / "model.onnx", WEIGHTS)  # weights inside the file
    assert run_cli("push", model, "--name", "m").returncode == 0
    first = _predict_cli()
    assert np.allclose(json.loads(first.stdout)["y"], EXPECTED)
    _tamper_keeping_the_size(_served_weights(home))
    return home


@pytest.mark.parametrize("policy", ["always", "first-load"])
def test_predict_never_answers_with_a_tampered_derived_copy(
    served_once: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    monkeypatch.setenv("MODELPORT_VERIFY", policy)
    result = _predict_cli()
    assert result.returncode == 0, result.stderr
    assert np.allclose(json.loads(result.stdout)["y"], EXPECTED)
    assert "was changed after it was built" in result.stderr
    assert "weights.bin: content changed since it was built" in result.stderr
    assert _served_weights(served_once).read_bytes() != bytes(WEIGHTS.nbytes)  # rebuilt


def test_serve_never_answers_with_a_tampered_derived_copy(served_once: Path) -> None:
    with running_server(served_once, ["m"]) as server:
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": X[0].tolist()}]
        }
        response = httpx.post(f"{server.http_url}/v2/models/m/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert np.allclose(output["data"], EXPECTED[0])
        assert "was changed after it was built" in server.output()


def test_verify_checks_the_derived_copy_and_removes_a_tampered_one(served_once: Path) -> None:
    result = run_cli("verify", "m@1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "m@1: ok"  # the stored files are intact
    assert lines[1].startswith("  derived copy onnx-")
    assert lines[1].endswith(": removed, to be built again from the stored files on the next load")
    assert lines[2].startswith("    weights.bin: content changed since it was built")
    assert not any(p.is_dir() for p in (served_once / "artifacts" / "derived").glob("*/onnx-*"))
    assert np.allclose(json.loads(_predict_cli().stdout)["y"], EXPECTED)
    again = run_cli("verify", "--all")
    assert again.returncode == 0
    assert again.stdout.splitlines()[1].endswith(": ok")
