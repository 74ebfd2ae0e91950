"""Defaults that need no tuning: a request that runs alone gets every core (an ONNX solo
session mapping the same weights), concurrent requests one core each; and the precedence of
settings stored on a version against flags and the config file."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport import LoadOptions, Registry, Settings
from modelport.runtimes.onnx.model import SOLO_QUIET_SECONDS, OnnxModel
from modelport.serving.config import (
    ModelServeConfig,
    ServeConfig,
    load_config,
    with_stored_settings,
)
from tests.onnx_models import make_matmul_model


@pytest.fixture(scope="module")
def matmul_registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("solo")
    weights = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    path = make_matmul_model(root / "matmul.onnx", weights)
    with Registry(Settings(home=root / "home", db_url=None)) as registry:
        registry.push(path, name="matmul")
        yield registry, weights


def _onnx(model: Any) -> OnnxModel:
    predictor = model.predictor
    assert isinstance(predictor, OnnxModel)
    return predictor


def test_default_streams_are_single_threaded_and_a_lone_request_gets_every_core() -> None:
    cores = os.cpu_count() or 1
    many = ModelServeConfig(instances=2)
    assert (many.thread_count(), many.solo_thread_count()) == (1, cores)
    # One instance already has every core; explicit threads or solo threads are obeyed.
    assert ModelServeConfig(instances=1).solo_thread_count() == 0
    assert ModelServeConfig(instances=2, threads=1).solo_thread_count() == 0
    assert ModelServeConfig(instances=2, solo_threads=0).solo_thread_count() == 0
    assert ModelServeConfig(instances=2, threads=1, solo_threads=3).solo_thread_count() == 3


def test_a_solo_session_answers_as_the_shared_one_alone_and_under_concurrency(
    matmul_registry: Any,
) -> None:
    registry, weights = matmul_registry
    model = registry.load("matmul@1", LoadOptions(intra_op_threads=1, solo_threads=2))
    plain = registry.load("matmul@1", LoadOptions(intra_op_threads=1))
    try:
        assert _onnx(model).has_solo_session
        assert not _onnx(plain).has_solo_session
        rows = [
            np.random.default_rng(i).standard_normal((3, 64)).astype(np.float32) for i in range(64)
        ]
        expected = [row @ weights for row in rows]
        # One row alone runs on the solo session; merged batches never do.
        alone = model.predict({"x": rows[0][:1]})["y"]
        np.testing.assert_allclose(alone, expected[0][:1], rtol=1e-4, atol=1e-4)
        rows = [row[: 1 + index % 3] for index, row in enumerate(rows)]
        expected = [row @ weights for row in rows]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda row: model.predict({"x": row})["y"], rows))
        for answer, want in zip(answers, expected, strict=True):
            np.testing.assert_allclose(answer, want, rtol=1e-4, atol=1e-4)
    finally:
        model.close()
        plain.close()


def test_no_solo_session_without_shared_weights(matmul_registry: Any) -> None:
    registry, _ = matmul_registry
    # Unoptimized graphs are loaded from the original: a second session would copy the
    # weights, so there is none.
    options = LoadOptions(
        intra_op_threads=1, solo_threads=2, extra={"graph_optimization_level": "disable"}
    )
    model = registry.load("matmul@1", options)
    try:
        assert not _onnx(model).has_solo_session
    finally:
        model.close()


def test_stored_settings_fill_only_what_flags_and_the_file_left_unset(tmp_path: Path) -> None:
    stored = {"instances": 3, "max_batch_size": 5, "no_such_setting": 1}
    tuned, applied = with_stored_settings(ModelServeConfig(), stored)
    assert applied == {"instances": 3, "max_batch_size": 5}
    assert (tuned.instances, tuned.max_batch_size) == (3, 5)

    flagged, applied = with_stored_settings(ModelServeConfig(instances=1), stored)
    assert applied == {"max_batch_size": 5}
    assert (flagged.instances, flagged.max_batch_size) == (1, 5)

    path = tmp_path / "serve.toml"
    path.write_text('[defaults]\nmax_batch_size = 7\n[models.iris]\nref = "iris@1"\n')

    from_file = load_config(path).model_settings("iris")
    merged, applied = with_stored_settings(from_file, stored)
    assert applied == {"instances": 3}
    assert merged.max_batch_size == 7
    assert with_stored_settings(ServeConfig().model_settings("other"), {"instances": -1}) == (
        ServeConfig().model_settings("other"),
        {},
    )  # a stored value no longer valid is ignored, never a failure to serve


class _Counted:
    """An onnxruntime session that records which calls it ran."""

    def __init__(self, session: Any, name: str, log: list[str]) -> None:
        self._session, self._name, self._log = session, name, log

    def run(self, names: Any, feed: Any) -> Any:
        self._log.append(self._name)
        return self._session.run(names, feed)


def test_only_traffic_that_ran_one_row_at_a_time_for_a_while_takes_the_solo_session(
    matmul_registry: Any,
) -> None:
    registry, _ = matmul_registry
    with registry.load("matmul@1", LoadOptions(intra_op_threads=1, solo_threads=2)) as model:
        predictor = _onnx(model)
        ran: list[str] = []
        predictor._session = _Counted(predictor._session, "shared", ran)
        predictor._solo = _Counted(predictor._solo, "solo", ran)
        row = np.ones((1, 64), dtype=np.float32)
        model.predict({"x": row})
        # A merged batch is load: single rows right after it stay on the shared session,
        # where they do not fight the next batch for the cores.
        model.predict({"x": np.ones((3, 64), dtype=np.float32)})
        model.predict({"x": row})
        assert ran == ["solo", "shared", "shared"]
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since <= SOLO_QUIET_SECONDS:
            time.sleep(0.05)
        model.predict({"x": row})
        assert ran[-1] == "solo"
