"""The derive-a-version job (``modelport.jobs.derive``): a job made of a real produce step (a
rescaled ONNX matmul) and the parity check, on a real registry. The happy path records
lineage, metrics and timings; then every way it can fail stores nothing and leaves no
scratch: produce raising, a new model that does not conform to the parent's signature, a
check that does not pass, a damaged parent, and a job killed with SIGKILL, whose scratch
``modelport gc`` removes. A live job's scratch survives a sweep running beside it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelport import InvalidModel, Registry, Settings, VerificationFailed
from modelport.jobs import Checkout, Produced, conform, derive
from modelport.jobs.derive import scratch_root
from modelport.jobs.inputs import generated_inputs
from modelport.jobs.parity import ParityReport, compare
from modelport.jobs.scratch import sweep
from modelport.runtimes import LoadedModel
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.onnx_models import make_matmul_model

WEIGHTS = np.random.default_rng(3).standard_normal((3, 2)).astype(np.float32)


@pytest.fixture
def sqlite_registry(home: Path) -> Iterator[Registry]:
    with Registry(Settings(home=home)) as registry:
        yield registry


@pytest.fixture
def parent(sqlite_registry: Registry, tmp_path: Path) -> str:
    return sqlite_registry.push(make_matmul_model(tmp_path / "m.onnx", WEIGHTS), "m").ref


def rescale(factor: float, *, inputs: int = 3) -> Callable[[Checkout, Path], Produced]:
    """A produce step: the parent's weights times ``factor``, as a new ONNX model."""

    def produce(checkout: Checkout, directory: Path) -> Produced:
        weights = numpy_helper.to_array(onnx.load(str(checkout.entry)).graph.initializer[0])
        if inputs != weights.shape[0]:
            weights = np.ones((inputs, weights.shape[1]), np.float32)
        path = make_matmul_model(directory / "model.onnx", weights * factor)
        return Produced(path, parameters={"tool": "numpy"}, description=f"times {factor}")

    return produce


def parity(parent_model: LoadedModel, candidate: LoadedModel) -> ParityReport:
    return compare(parent_model, candidate, generated_inputs(parent_model.signature))


def leftovers(home: Path) -> list[str]:
    root = scratch_root(Settings(home=home))
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_a_derived_version_records_lineage_metrics_and_timings(
    registry: Registry, tmp_path: Path, home: Path
) -> None:
    registry.push(make_matmul_model(tmp_path / "m.onnx", WEIGHTS), "m")

    derived = derive(
        registry, "m", rescale(1.0 + 1e-6), kind="optimize", check=parity,
        parameters={"factor": 1.0, "tool": "overridden"}, name="m-fast", aliases=["candidate"],
    )  # fmt: skip

    version = derived.version
    assert version == registry.get("m-fast@candidate")
    assert (version.ref, version.format, version.description) == (
        "m-fast@1",
        "onnx",
        "times 1.000001",
    )
    assert version.lineage.parent == "m@1" and derived.parent.ref == "m@1"
    assert version.lineage.operation == "optimize"
    assert version.lineage.parameters == {"factor": 1.0, "tool": "numpy"} == derived.parameters
    assert version.metrics == derived.report.metrics()
    assert version.metrics["parity.passed"] is True and version.metrics["parity.max_abs.y"] < 1e-4
    assert version.signature == derived.parent.signature
    assert set(derived.seconds) == {"checkout", "produce", "check", "push"}
    assert leftovers(home) == []


def test_when_produce_raises_nothing_is_stored_and_the_scratch_is_gone(
    sqlite_registry: Registry, parent: str, home: Path
) -> None:
    seen: list[Path] = []

    def produce(checkout: Checkout, directory: Path) -> Produced:
        (directory / "half.onnx").write_bytes(b"half a model")
        seen.append(directory)
        raise RuntimeError("the exporter crashed")

    with pytest.raises(RuntimeError, match="the exporter crashed"):
        derive(sqlite_registry, parent, produce, kind="optimize", check=parity)

    assert [v.ref for v in sqlite_registry.list_versions("m")] == ["m@1"]
    assert seen and not seen[0].exists()
    assert leftovers(home) == []


def test_a_check_that_fails_stores_nothing_and_says_why(
    sqlite_registry: Registry, parent: str, home: Path
) -> None:
    with pytest.raises(InvalidModel) as caught:
        derive(sqlite_registry, parent, rescale(2.0), kind="optimize", check=parity)

    message = str(caught.value)
    assert message.startswith("the version derived from m@1 by optimize did not pass its check: ")
    assert "'y': max abs error " in message and message.endswith("; nothing was stored")
    assert [v.ref for v in sqlite_registry.list_versions("m")] == ["m@1"]
    assert leftovers(home) == []
    # No version number was spent on the refusal.
    assert (
        derive(sqlite_registry, parent, rescale(1.0), kind="optimize", check=parity).version.ref
        == "m@2"
    )


def test_a_model_that_breaks_the_parents_promise_is_refused_before_its_check(
    sqlite_registry: Registry, parent: str, home: Path
) -> None:
    checked: list[bool] = []

    def check(parent_model: LoadedModel, candidate: LoadedModel) -> ParityReport:
        checked.append(True)
        return parity(parent_model, candidate)

    with pytest.raises(InvalidModel) as caught:
        derive(sqlite_registry, parent, rescale(1.0, inputs=4), kind="optimize", check=check)

    assert str(caught.value) == (
        "the version derived from m@1 by optimize does not promise what m@1 promised: input "
        "'x' has shape [-1, 4] where the parent's is [-1, 3]; nothing was stored"
    )
    assert not checked
    assert [v.ref for v in sqlite_registry.list_versions("m")] == ["m@1"]
    assert leftovers(home) == []


def _spec(
    name: str, datatype: DataType = DataType.FP32, shape: tuple[int, ...] | None = (-1, 3)
) -> TensorSpec:
    return TensorSpec(name, datatype, shape)


PROMISED = Signature(
    (_spec("x"),), (_spec("y", shape=(-1, 2)), _spec("label", DataType.INT64, (-1,)))
)


@pytest.mark.parametrize(
    ("given", "problems"),
    [
        (PROMISED, []),
        # Accepting more than was promised is fine; a float output may change precision.
        (
            Signature(
                (_spec("x", shape=(-1, -1)),),
                (
                    _spec("y", DataType.FP16, (-1, 2)),
                    _spec("label", DataType.INT64, (-1,)),
                    _spec("extra"),
                ),
            ),
            [],
        ),
        (
            Signature((_spec("x", shape=(8, 3)),), PROMISED.outputs),
            ["input 'x' has shape [8, 3] where the parent's is [-1, 3]"],
        ),
        (
            Signature((_spec("x", DataType.FP64),), PROMISED.outputs),
            ["input 'x' is FP64 where the parent's is FP32"],
        ),
        (
            Signature((_spec("x"), _spec("mask", DataType.BOOL)), PROMISED.outputs[:1]),
            [
                "input 'mask' is new: clients of the parent do not send it",
                "output 'label' is missing",
            ],
        ),
        (
            Signature(
                PROMISED.inputs,
                (_spec("y", shape=(-1, 2, 1)), _spec("label", DataType.FP32, (-1,))),
            ),
            [
                "output 'y' has shape [-1, 2, 1] where the parent's is [-1, 2]",
                "output 'label' is FP32 where the parent's is INT64",
            ],
        ),
    ],
)
def test_conform_names_every_broken_promise(given: Signature, problems: list[str]) -> None:
    assert conform(PROMISED, given) == problems


def test_a_damaged_parent_is_refused_before_produce_runs(
    sqlite_registry: Registry, parent: str, home: Path
) -> None:
    original = (home.parent / "m.onnx").read_bytes()
    damaged = 0
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.read_bytes() == original:
            path.chmod(0o644)
            path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
            damaged += 1
    assert damaged

    def produce(checkout: Checkout, directory: Path) -> Produced:
        raise AssertionError("produce ran on a damaged parent")

    with pytest.raises(VerificationFailed, match="'m.onnx' does not match its manifest digest"):
        derive(sqlite_registry, parent, produce, kind="optimize", check=parity)
    assert [v.ref for v in sqlite_registry.list_versions("m")] == ["m@1"]
    assert leftovers(home) == []


def test_a_sweep_beside_a_live_job_spares_it_and_removes_dead_ones(
    sqlite_registry: Registry, parent: str, home: Path
) -> None:
    root = scratch_root(Settings(home=home))
    root.mkdir(parents=True)
    (root / "dead").mkdir()
    (root / "dead" / "half.onnx").write_bytes(b"left by a killed job")
    (root / "dead.lock").touch()  # nobody holds it: its job is gone
    swept_during: list[int] = []

    def produce(checkout: Checkout, directory: Path) -> Produced:
        swept_during.append(sweep(root))
        assert directory.is_dir()
        return rescale(1.0)(checkout, directory)

    derive(sqlite_registry, parent, produce, kind="optimize", check=parity)

    assert swept_during == [0]  # the dead job went when this one started; this one stayed
    assert leftovers(home) == []


KILLED_JOB = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from modelport import Registry
    from modelport.jobs import derive
    from modelport.jobs.parity import compare

    def produce(checkout, directory):
        (directory / "half.onnx").write_bytes(b"half a model")
        Path(sys.argv[1]).write_text(str(directory))
        threading.Event().wait()  # until killed

    with Registry() as registry:
        derive(registry, "m@1", produce, kind="optimize", check=lambda a, b: compare(a, b, {}))
    """
)


def test_a_job_killed_mid_way_leaves_only_what_gc_removes(
    sqlite_registry: Registry, parent: str, home: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "producing"
    job = subprocess.Popen([sys.executable, "-c", KILLED_JOB, str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"the job never started producing (exit {job.returncode})"
    finally:
        job.kill()
        job.wait(timeout=30)
    scratch = Path(marker.read_text())
    assert scratch.is_dir()  # SIGKILL gives no chance to clean up

    result = run_cli("gc")

    assert result.returncode == 0, result.stderr
    assert "removed the scratch of 1 interrupted job(s)" in result.stdout
    assert leftovers(home) == []
    assert [v.ref for v in sqlite_registry.list_versions("m")] == ["m@1"]
    assert run_cli("verify", "--all").returncode == 0
