"""``modelport tune`` and the settings it stores: measured on real servers, stored on the
version, used by ``serve`` unless flags or the config file say otherwise.

No timing assertions: which point wins is the command's own measurement; the tests check
that what it chose is what was stored, and that ``serve`` then runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import modelport
from modelport import InvalidInput, NotFound, Registry, Settings
from modelport.datasets.feed import Feed
from modelport.tuning.grid import default_point, grid
from modelport.types import DataType, Signature, TensorSpec
from tests.conftest import run_cli
from tests.serving_fixtures import push, running_server

# Short and small: the tests check behaviour, never which point is faster.
_ONE_INSTANCE = {
    "instances": 1,
    "threads": 1,
    "solo_threads": 0,
    "max_batch_size": 0,
    "max_queue_delay_ms": 0.0,
}


@pytest.fixture
def iris(home: Path, iris_onnx: Path) -> Path:
    push(home, iris_onnx, "iris")
    return home


def _config(server: Any, name: str = "iris") -> dict[str, Any]:
    response = httpx.get(f"{server.http_url}/v2/models/{name}/config", timeout=10)
    response.raise_for_status()
    config: dict[str, Any] = response.json()
    return config


def test_tune_stores_the_chosen_point_and_serve_runs_it(iris: Path) -> None:
    with Registry(Settings(home=iris)) as registry:
        result = modelport.tune(
            "iris",
            concurrency=(1, 2),
            duration=0.3,
            registry=registry,
            points=[_ONE_INSTANCE],
        )
        assert [p.settings for p in result.points] == [default_point(), _ONE_INSTANCE]
        assert result.default.is_default
        for point in result.points:
            # The highest concurrency first; a point far below the defaults there stops.
            measured = [r.concurrency for r in point.results]
            assert measured == [1, 2] or (point.skipped and measured == [2])
            assert all(r.requests > 0 and r.errors == 0 for r in point.results)
        assert not result.default.skipped
        assert result.chosen is not None
        assert result.stored
        assert result.ref == "iris@1"
        # A point other than the defaults is stored only after measuring it against them again.
        if result.chosen is result.default:
            assert not result.notes or result.notes[-1].endswith("keeping the defaults")
        else:
            assert result.notes[-1].startswith("confirmed at c=2")
        stored = registry.get("iris@1").serving_settings
    assert stored == result.chosen.settings

    with running_server(iris, ["iris"]) as server:
        config = _config(server)
        assert "iris@1: settings stored by modelport tune" in server.output()
    assert config["instance_group"][0]["count"] == stored["instances"]
    parameters = config["parameters"]
    assert parameters["modelport_max_batch_size"]["string_value"] == str(stored["max_batch_size"])

    shown = run_cli("show", "iris@1", "--json")
    assert json.loads(shown.stdout)["metadata"]["serving"] == stored
    assert "serving      instances=" in run_cli("show", "iris@1").stdout


def test_flags_and_the_config_file_override_stored_settings(iris: Path, tmp_path: Path) -> None:
    with Registry(Settings(home=iris)) as registry:
        registry.set_serving_settings(
            "iris@1", {"instances": 3, "max_batch_size": 5, "solo_threads": 3}
        )
    with running_server(iris, ["iris@1"], ["--instances", "2", "--solo-threads", "2"]) as server:
        config = _config(server)
        output = server.output()
    assert config["instance_group"][0]["count"] == 2
    assert config["parameters"]["modelport_solo_threads"]["string_value"] == "2"
    assert config["parameters"]["modelport_max_batch_size"]["string_value"] == "5"
    assert "max_batch_size=5" in output
    assert "overridden by flags or the config file: instances, solo_threads" in output

    toml = tmp_path / "serve.toml"
    toml.write_text('[models.iris]\nref = "iris@1"\nmax_batch_size = 7\n')
    with running_server(iris, [], ["--config", str(toml)]) as server:
        config = _config(server)
    assert config["instance_group"][0]["count"] == 3
    assert config["parameters"]["modelport_max_batch_size"]["string_value"] == "7"
    assert config["parameters"]["modelport_solo_threads"]["string_value"] == "3"


def test_a_budget_nothing_meets_stores_nothing_and_exits_1(iris: Path) -> None:
    result = run_cli(
        "tune", "iris", "--concurrency", "1", "--duration", "0.2",
        "--latency-p99-ms", "0.000001", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no point met p99 <= 1e-06 ms" in result.stderr
    report = json.loads(result.stdout)
    assert report["chosen"] is None
    assert not report["stored"]
    assert all(point["skipped"].startswith("p99 ") for point in report["points"])
    assert "serving" not in json.loads(run_cli("show", "iris@1", "--json").stdout)["metadata"]


def test_a_feed_supplies_the_rows(iris: Path) -> None:
    import numpy as np

    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    feed = Feed(inputs={"input": rows}, labels=None, rows=2, source="test")
    with Registry(Settings(home=iris)) as registry:
        result = modelport.tune(
            "iris@1", concurrency=(1,), duration=0.2, registry=registry,
            dataset=feed, points=[], store=False,
        )  # fmt: skip
        assert result.chosen is not None
        assert not result.stored
        assert registry.get("iris@1").serving_settings == {}


def test_a_dataset_reference_supplies_the_rows(iris: Path) -> None:
    assert run_cli("dataset", "builtin", "iris").returncode == 0
    with Registry(Settings(home=iris)) as registry:
        result = modelport.tune(
            "iris@1", concurrency=(1,), duration=0.2, registry=registry,
            dataset="iris@1", points=[], store=False,
        )  # fmt: skip
        assert result.chosen is not None
    missing = run_cli("tune", "iris@1", "--dataset", "nosuch@1", "--no-store")
    assert missing.returncode != 0
    assert "nosuch" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "concurrency must be 1 or more"),
        (["--concurrency", "one"], "write whole numbers"),
        (["--duration", "0"], "duration must be positive"),
        (["--latency-p99-ms", "-1"], "budget must be positive"),
    ],
)
def test_bad_arguments_get_one_clear_line(iris: Path, args: list[str], message: str) -> None:
    result = run_cli("tune", "iris@1", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


def test_an_unknown_version_is_not_found(iris: Path) -> None:
    with Registry(Settings(home=iris)) as registry, pytest.raises(NotFound):
        modelport.tune("iris@9", registry=registry)
    with pytest.raises(InvalidInput):
        modelport.tune("iris@1", concurrency=())


def test_the_grid_never_oversubscribes_and_batches_only_what_can_batch() -> None:
    batchable = Signature(
        (TensorSpec("x", DataType.FP32, (-1, 4)),), (TensorSpec("y", DataType.FP32, (-1,)),)
    )
    fixed = Signature(
        (TensorSpec("x", DataType.FP32, (1, 4)),), (TensorSpec("y", DataType.FP32, (1,)),)
    )
    for cores in (1, 2, 4, 8):
        points = grid(batchable, cores)
        assert points[0] == default_point()
        assert len(points) == len({json.dumps(p, sort_keys=True) for p in points})
        for point in points[1:]:
            assert point["instances"] * point["threads"] <= cores
    assert {p["max_batch_size"] for p in grid(batchable, 2)} == {0, 32}
    assert {p["max_queue_delay_ms"] for p in grid(fixed, 2)[1:]} == {0.0}
    assert len(grid(fixed, 2)) < len(grid(batchable, 2))


def test_serving_settings_are_stored_replaced_and_removed(
    registry: Registry, iris_onnx: Path
) -> None:
    registry.push(iris_onnx, name="iris")
    before = registry.get("iris@1").metadata
    registry.set_serving_settings("iris@1", {"instances": 2})
    registry.set_serving_settings("iris", {"instances": 1, "max_batch_size": 0})
    record = registry.get("iris@1")
    assert record.serving_settings == {"instances": 1, "max_batch_size": 0}
    assert {k: v for k, v in record.metadata.items() if k != "serving"} == before
    registry.set_serving_settings("iris@1", None)
    assert registry.get("iris@1").metadata == before
    with pytest.raises(NotFound):
        registry.set_serving_settings("iris@2", {"instances": 1})


def _point(settings: dict[str, Any], *measured: tuple[float, float]) -> Any:
    from modelport.tuning.load import LoadResult
    from modelport.tuning.tune import TunePoint

    results = tuple(
        LoadResult(level, rate, p99 / 2, p99, int(rate), 0)
        for level, (rate, p99) in zip((1, 32), measured, strict=True)
    )
    return TunePoint(settings, results, is_default=settings == default_point())


def test_the_choice_meets_the_budget_and_never_leaves_the_defaults_for_noise() -> None:
    from modelport.tuning.tune import _choose

    default = _point(default_point(), (100, 10), (1000, 40))
    slightly = _point({"instances": 1}, (90, 10), (1020, 45))  # +2%: noise
    better = _point({"instances": 3}, (80, 12), (1300, 60))  # +30%, p99 60 ms
    points = [default, slightly, better]
    assert _choose("m@1", (1, 32), None, points).chosen is better
    assert _choose("m@1", (1, 32), 50.0, points).chosen is default  # better misses 50 ms
    assert _choose("m@1", (1, 32), 5.0, points).chosen is None  # nothing meets 5 ms
    assert _choose("m@1", (1, 32), None, [default, slightly]).chosen is default
