"""How `modelport serve` behaves under load and change: backpressure, swaps, residency,
cache, traffic split, deadlines, body limits and graceful shutdown — on real servers."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.onnx_models import make_add_model, make_iris_onnx, make_slow_model
from tests.serving_fixtures import (
    CLI,
    cli_env,
    continuous_load,
    metric,
    push,
    running_server,
    wait_until,
)

IRIS = {
    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
}


def _slow_body(rows: int) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "x", "shape": [rows, 512], "datatype": "FP32", "data": [1.0] * (rows * 512)}
        ]
    }


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_full_queue_gets_fast_503_and_health_stays_up(home: Path, tmp_path: Path) -> None:
    push(home, make_slow_model(tmp_path / "slow.onnx", depth=32), "slow")
    args = ["--max-batch-size", "0", "--max-queue-size", "2", "--instances", "1", "--no-grpc"]
    with running_server(home, ["slow"], args) as server:
        url = f"{server.http_url}/v2/models/slow/infer"
        body = _slow_body(512)
        finished: list[tuple[float, int, str | None]] = []

        def send() -> None:
            response = httpx.post(url, json=body, timeout=120)
            finished.append(
                (time.monotonic(), response.status_code, response.headers.get("retry-after"))
            )

        threads = [threading.Thread(target=send) for _ in range(12)]
        for thread in threads:
            thread.start()
        # health is asked while the model is busy and its queue full (or, on a fast
        # machine, once the first answers are back)
        wait_until(
            lambda: finished or metric(server.http_url, "modelport_requests_in_flight") >= 1,
            "a request in flight",
        )
        health = httpx.get(f"{server.http_url}/v2/health/live", timeout=5)
        for thread in threads:
            thread.join(120)
        assert health.status_code == 200
        statuses = Counter(status for _, status, _ in finished)
        assert statuses[503] >= 1, statuses
        assert statuses[200] >= 1, statuses
        assert set(statuses) <= {200, 503}
        assert all(retry == "1" for _, status, retry in finished if status == 503)
        # refusals came back before the accepted work finished: they were not queued behind it
        first_refusal = min(t for t, status, _ in finished if status == 503)
        last_success = max(t for t, status, _ in finished if status == 200)
        assert first_refusal < last_success
        metrics = httpx.get(f"{server.http_url}/metrics").text
        assert 'outcome="overloaded"' in metrics


def test_deadline_gives_504(home: Path, tmp_path: Path) -> None:
    push(home, make_slow_model(tmp_path / "slow.onnx", depth=32), "slow")
    with running_server(
        home, ["slow"], ["--timeout-ms", "1", "--no-grpc", "--max-batch-size", "0"]
    ) as server:
        response = httpx.post(
            f"{server.http_url}/v2/models/slow/infer", json=_slow_body(512), timeout=60
        )
        assert response.status_code == 504
        assert response.json()["error"] in (
            "no result within 1 ms",
            "the request expired while queued",
        )


def test_client_timeouts_are_honoured(home: Path, tmp_path: Path) -> None:
    """Triton's clients send a ``timeout`` parameter (microseconds); gRPC calls may carry a
    deadline. The earlier of those and the model's own timeout applies, on both protocols."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    push(home, make_slow_model(tmp_path / "slow.onnx", depth=32), "slow")
    with running_server(home, ["slow"], ["--max-batch-size", "0"]) as server:
        url = f"{server.http_url}/v2/models/slow/infer"
        body = _slow_body(512)
        response = httpx.post(url, json={**body, "parameters": {"timeout": 1000}}, timeout=60)
        assert response.status_code == 504, response.text
        for bad in (-1, "soon", 1.5):
            response = httpx.post(url, json={**body, "parameters": {"timeout": bad}})
            assert response.status_code == 400
            assert "parameter 'timeout' must be a whole number of microseconds" in response.text
        response = httpx.post(
            url, json={**_slow_body(1), "parameters": {"timeout": 60_000_000, "tag": 7}}
        )
        assert response.status_code == 200, response.text
        assert "parameters" not in response.json()  # request parameters are not echoed

        client = triton_grpc.InferenceServerClient(server.grpc_target)
        request = triton_grpc.InferInput("x", [2048, 512], "FP32")
        request.set_data_from_numpy(np.ones((2048, 512), np.float32))
        with pytest.raises(InferenceServerException) as parameter:
            client.infer("slow", [request], timeout=1000)
        assert parameter.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        with pytest.raises(InferenceServerException) as deadline:
            client.infer("slow", [request], client_timeout=0.05)
        assert deadline.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        client.close()

        def grpc_count(outcome: str) -> float:
            metrics = httpx.get(f"{server.http_url}/metrics").text
            labels = f'model="slow",outcome="{outcome}",protocol="grpc_v2",version="1"'
            prefix = f"modelport_requests_total{{{labels}}} "
            lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
            return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

        # The parameter times out in the server. At the deadline the server either times the
        # call out itself or grpc cancels it there first, whichever comes first: never success.
        def ended() -> float:
            return grpc_count("timeout") + grpc_count("cancelled")

        deadline_at = time.monotonic() + 10
        while ended() < 2 and time.monotonic() < deadline_at:
            time.sleep(0.1)
        assert ended() == 2
        assert grpc_count("timeout") >= 1
        assert grpc_count("success") == 0


def test_body_limit_gives_413(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris")
    with running_server(home, ["iris"], ["--max-request-size", "1KiB", "--no-grpc"]) as server:
        url = f"{server.http_url}/v2/models/iris/infer"
        big = {
            "inputs": [
                {"name": "input", "shape": [100, 4], "datatype": "FP32", "data": [1.0] * 400}
            ]
        }
        response = httpx.post(url, json=big)
        assert response.status_code == 413
        assert "1024-byte limit" in response.json()["error"]
        assert httpx.post(url, json=IRIS).status_code == 200

        # Chunked bodies declare no length: the limit holds while reading, and a body that
        # arrives in many pieces under the limit is read whole.
        def pieces(document: object, size: int) -> Iterator[bytes]:
            raw = json.dumps(document).encode()
            yield from (raw[i : i + size] for i in range(0, len(raw), size))

        response = httpx.post(url, content=pieces(big, 100))
        assert response.status_code == 413
        assert "over the 1024-byte limit" in response.json()["error"]
        response = httpx.post(url, content=pieces(IRIS, 7))
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["name"] == "label"


def test_alias_move_swaps_versions_with_zero_failed_requests(home: Path, tmp_path: Path) -> None:
    iris = make_iris_onnx(tmp_path / "iris.onnx", zipmap=False)
    push(home, iris, "iris", "production")
    push(home, iris, "iris")
    with running_server(home, ["iris@production"], ["--no-grpc"]) as server:
        url = f"{server.http_url}/v2/models/iris/infer"
        with continuous_load(url, IRIS) as seen:
            wait_until(lambda: seen[(200, "1")] >= 20, "answers from version 1")
            moved = subprocess.run(
                [CLI, "alias", "iris@2", "production"],
                env=cli_env(home),
                capture_output=True,
                check=False,
            )
            assert moved.returncode == 0
            load = f"{server.http_url}/v2/repository/models/iris/load"
            assert httpx.post(load, timeout=60).status_code == 200
            wait_until(lambda: seen[(200, "2")] >= 20, "answers from version 2")
        assert {status for status, _ in seen} == {200}, seen
        assert seen[(200, "1")] > 0 and seen[(200, "2")] > 0, seen
        index = httpx.post(f"{server.http_url}/v2/repository/index", json={}).json()
        states = {row["version"]: row["state"] for row in index if row["name"] == "iris"}
        assert states == {"1": "UNAVAILABLE", "2": "READY"}


def test_watch_follows_a_moved_alias(home: Path, tmp_path: Path) -> None:
    iris = make_iris_onnx(tmp_path / "iris.onnx", zipmap=False)
    push(home, iris, "iris", "production")
    push(home, iris, "iris")
    with running_server(
        home, ["iris@production"], ["--watch", "--watch-interval", "0.2", "--no-grpc"]
    ) as server:
        url = f"{server.http_url}/v2/models/iris/infer"
        assert httpx.post(url, json=IRIS).json()["model_version"] == "1"
        subprocess.run(
            [CLI, "alias", "iris@2", "production"],
            env=cli_env(home),
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 20
        while httpx.post(url, json=IRIS).json()["model_version"] != "2":
            assert time.monotonic() < deadline, "the server never followed the alias"
            time.sleep(0.1)


def test_repository_unload_load_and_adding_a_model(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris")
    push(home, make_add_model(tmp_path / "add.onnx"), "add")
    with running_server(home, ["iris"], ["--no-grpc"]) as server:
        base = server.http_url
        assert httpx.post(f"{base}/v2/repository/models/iris/unload").status_code == 200
        refused = httpx.post(f"{base}/v2/models/iris/infer", json=IRIS)
        assert refused.status_code == 503
        assert "was unloaded" in refused.json()["error"]
        assert httpx.get(f"{base}/v2/models/iris/ready").status_code == 400
        assert httpx.post(f"{base}/v2/repository/models/iris/load").status_code == 200
        assert httpx.post(f"{base}/v2/models/iris/infer", json=IRIS).status_code == 200
        # a registry model this server did not serve yet
        assert httpx.post(f"{base}/v2/models/add/infer", json={}).status_code == 404
        assert httpx.post(f"{base}/v2/repository/models/add/load").status_code == 200
        body = {
            "inputs": [
                {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
                {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]},
            ]
        }
        outputs = {
            o["name"]: o["data"]
            for o in httpx.post(f"{base}/v2/models/add/infer", json=body).json()["outputs"]
        }
        assert outputs == {"sum": [2, 3, 4], "product": [1, 2, 3]}
        missing = httpx.post(f"{base}/v2/repository/models/nope/load")
        assert missing.status_code == 404


def test_max_models_unloads_the_least_recently_used(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris")
    push(home, make_add_model(tmp_path / "add.onnx"), "add")
    add_body = {
        "inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]},
        ]
    }
    with running_server(home, ["iris"], ["--max-models", "1", "--no-grpc"]) as server:
        base = server.http_url
        assert httpx.post(f"{base}/v2/repository/models/add/load").status_code == 200

        def states() -> dict[str, str]:
            rows = httpx.post(f"{base}/v2/repository/index").json()
            return {row["name"]: row["state"] for row in rows}

        assert states() == {"iris": "UNAVAILABLE", "add": "READY"}
        assert (
            httpx.post(f"{base}/v2/models/iris/infer", json=IRIS).status_code == 200
        )  # loads again
        assert states() == {"iris": "READY", "add": "UNAVAILABLE"}
        assert httpx.post(f"{base}/v2/models/add/infer", json=add_body).status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert 'modelport_model_unloads_total{reason="evicted"} 3.0' in metrics, [
            line for line in metrics.splitlines() if "unloads" in line
        ]
        assert "modelport_models_loaded 1.0" in metrics


def test_response_cache_hits(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris")
    with running_server(home, ["iris"], ["--response-cache-size", "8", "--no-grpc"]) as server:
        url = f"{server.http_url}/v2/models/iris/infer"
        first = httpx.post(url, json=IRIS).json()
        second = httpx.post(url, json=IRIS).json()
        assert first["outputs"] == second["outputs"]
        other = {"inputs": [{**IRIS["inputs"][0], "data": [6.7, 3.0, 5.2, 2.3]}]}  # type: ignore[dict-item]
        assert httpx.post(url, json=other).json()["outputs"] != first["outputs"]
        metrics = httpx.get(f"{server.http_url}/metrics").text
        assert 'modelport_cache_total{model="iris",result="hit",version="1"} 1.0' in metrics
        assert 'modelport_cache_total{model="iris",result="miss",version="1"} 2.0' in metrics


def test_traffic_split_from_config(home: Path, tmp_path: Path) -> None:
    iris = make_iris_onnx(tmp_path / "iris.onnx", zipmap=False)
    push(home, iris, "iris")
    push(home, iris, "iris")
    config = tmp_path / "serve.toml"
    config.write_text(
        '[defaults]\nmax_batch_size = 8\n\n[models.iris]\nref = "iris@1"\ntraffic = { "1" = 50, "2" = 50 }\n'
    )
    with running_server(home, [], ["--config", str(config), "--no-grpc"]) as server:
        versions = Counter(
            httpx.post(f"{server.http_url}/v2/models/iris/infer", json=IRIS).json()["model_version"]
            for _ in range(200)
        )
        assert set(versions) == {"1", "2"}
        assert min(versions.values()) > 40  # 50/50 split, far from either extreme
        metrics = httpx.get(f"{server.http_url}/metrics").text
        assert (
            'modelport_requests_total{model="iris",outcome="success",protocol="rest_v2",version="2"}'
            in metrics
        )


def test_aliased_serves_every_model_with_the_alias(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris", "production")
    push(home, make_add_model(tmp_path / "add.onnx"), "add", "production")
    push(home, make_add_model(tmp_path / "other.onnx"), "other")
    with running_server(home, [], ["--aliased", "production", "--no-grpc"]) as server:
        rows = httpx.post(f"{server.http_url}/v2/repository/index").json()
        assert sorted(row["name"] for row in rows) == ["add", "iris"]


def test_sigterm_finishes_in_flight_requests(home: Path, tmp_path: Path) -> None:
    push(home, make_slow_model(tmp_path / "slow.onnx", depth=32), "slow")
    with running_server(home, ["slow"], ["--no-grpc", "--max-batch-size", "0"]) as server:
        results: list[int] = []
        sender = threading.Thread(
            target=lambda: results.append(
                httpx.post(
                    f"{server.http_url}/v2/models/slow/infer", json=_slow_body(1024), timeout=60
                ).status_code
            )
        )
        sender.start()
        wait_until(
            lambda: metric(server.http_url, "modelport_requests_in_flight") >= 1,
            "the request in flight",
        )
        server.proc.send_signal(signal.SIGTERM)
        sender.join(60)
        assert server.proc.wait(60) == 0
        assert results == [200]


def test_nothing_to_serve_is_a_clear_error(home: Path) -> None:
    # With no models named at all, serve is a hub (tests/test_registry_api.py); an --aliased
    # that matches nothing is still a mistake worth stopping for.
    result = subprocess.run(
        [CLI, "serve", "--no-grpc", "--aliased", "production"],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: nothing to serve")
    missing = subprocess.run(
        [CLI, "serve", "nope@1"],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 3
    assert "no model named 'nope'" in missing.stderr


def test_bad_config_file_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("[models.iris]\nmax_batch_size = -1\n")
    result = subprocess.run(
        [CLI, "serve", "--config", str(config)],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "models.iris.max_batch_size" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_busy_port_is_one_clear_error(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris")
    with running_server(home, ["iris"], ["--no-grpc"]) as server:
        port = server.http_url.rsplit(":", 1)[1]
        result = subprocess.run(
            [CLI, "serve", "iris", "--http-port", port, "--no-grpc"],
            env=cli_env(home), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 10
        assert result.stderr.startswith(f"error: cannot listen for REST on 127.0.0.1:{port}")
        assert "Traceback" not in result.stderr
        assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200
