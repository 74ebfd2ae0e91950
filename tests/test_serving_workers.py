"""`modelport serve --workers N`: several server processes on the same ports, on real servers.

Which worker a new connection reaches is the kernel's choice, so tests that must see every
worker send many requests, each on a fresh connection, and check what all of them got.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from modelport.serving.metrics import ServingMetrics
from tests.onnx_models import make_conv_model, make_iris_onnx
from tests.serving_fixtures import (
    CLI,
    Server,
    cli_env,
    continuous_load,
    free_port,
    predict_in_process,
    push,
    running_server,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").exists(), reason="worker checks read /proc (Linux)"
)

ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.0, 3.4, 1.5, 0.2]],
    dtype=np.float32,
)


def _body(row: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row.tolist()}]
    }


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris", "production")
    return home


def _workers_of(pid: int) -> set[int]:
    """Pids of the live child processes of ``pid`` (the supervisor's workers)."""
    children = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() != str(pid) or fields.get("State", "")[:1] == "Z":
            continue
        try:
            # Read once: a process that just died (the killed worker) is gone between reads.
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        # multiprocessing's spawn start also runs a resource tracker; workers run our main.
        if b"spawn_main" in command and b"resource_tracker" not in command:
            children.add(int(status.parent.name))
    return children


def _wait_for_workers(server: Server, count: int, timeout: float = 60) -> set[int]:
    """The workers, once ``count`` run: the first answers "ready" before the others start."""
    deadline = time.monotonic() + timeout
    while len(workers := _workers_of(server.proc.pid)) < count:
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    return workers


def _mapped_weights(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in maps if line.endswith("/weights.bin")}


def _metrics(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_two_workers_answer_correctly_and_metrics_add_up(home: Path) -> None:
    expected = predict_in_process(home, "iris", {"input": ROWS})
    with running_server(home, ["iris@production"], ["--workers", "2"]) as server:
        assert "(2 worker processes)" in server.output()
        _wait_for_workers(server, 2)
        url = f"{server.http_url}/v2/models/iris/infer"

        def ask(i: int) -> tuple[int, dict[str, object]]:
            row = i % len(ROWS)
            with httpx.Client(timeout=30) as client:  # a new connection: any worker
                return row, client.post(url, json=_body(ROWS[row])).json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(200)))
        for row, answer in answers:
            outputs = {o["name"]: o["data"] for o in answer["outputs"]}  # type: ignore[attr-defined]
            assert outputs["label"] == expected["label"][row : row + 1].tolist()
            np.testing.assert_allclose(
                outputs["probabilities"], expected["probabilities"][row], rtol=1e-6
            )
        # gRPC workers share their port too
        client = grpcclient.InferenceServerClient(server.grpc_target)
        tensor = grpcclient.InferInput("input", [4, 4], "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = client.infer("iris", [tensor])
        np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])

        metrics = _metrics(server.http_url)
        requests = metrics["modelport_requests_total"]
        by_protocol = {dict(k)["protocol"]: v for k, v in requests.items()}
        assert by_protocol == {"rest_v2": 200, "grpc_v2": 1}
        memory = metrics["modelport_worker_memory_bytes"]
        assert {dict(k)["worker"] for k in memory} == {"0", "1"}
        assert all(value > 0 for value in memory.values())
        # each worker's model-load gauge is merged by maximum, not summed
        assert metrics["modelport_models_loaded"][()] == 1


def test_workers_share_one_copy_of_onnx_weights(home: Path, tmp_path: Path) -> None:
    # Conv weights are used as mapped; MatMul/Gemm weights are prepacked into private memory.
    push(home, make_conv_model(tmp_path / "conv.onnx"), "conv")
    expected = predict_in_process(home, "conv", {"x": np.ones((1, 3, 16, 16), np.float32)})
    with running_server(home, ["conv"], ["--workers", "2", "--no-grpc"]) as server:
        workers = _wait_for_workers(server, 2)
        deadline = time.monotonic() + 60  # the second worker loads after it started
        while not all(_mapped_weights(pid) for pid in workers):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        mapped = {pid: _mapped_weights(pid) for pid in workers}
        assert len(set.union(*mapped.values())) == 1, mapped
        assert next(iter(mapped.values())).pop().startswith(str(home))
        data = [1.0] * (3 * 16 * 16)
        body = {
            "inputs": [{"name": "x", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": data}]
        }
        answer = httpx.post(f"{server.http_url}/v2/models/conv/infer", json=body).json()
        np.testing.assert_allclose(answer["outputs"][0]["data"], expected["y"][0], rtol=1e-6)


def test_repository_calls_reach_every_worker(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris")  # iris@2
    with running_server(home, ["iris@production"], ["--workers", "2", "--no-grpc"]) as server:
        base = server.http_url

        def statuses(n: int = 40) -> Counter[tuple[int, str]]:
            seen: Counter[tuple[int, str]] = Counter()
            for _ in range(n):
                with httpx.Client(timeout=30) as client:
                    response = client.post(f"{base}/v2/models/iris/infer", json=_body(ROWS[0]))
                    version = response.json().get("model_version", "")
                    seen[(response.status_code, version)] += 1
            return seen

        assert httpx.post(f"{base}/v2/repository/models/iris/unload").status_code == 200
        assert set(statuses()) == {(503, "")}
        assert httpx.post(f"{base}/v2/repository/models/iris/load").status_code == 200
        assert set(statuses()) == {(200, "1")}
        missing = httpx.post(f"{base}/v2/repository/models/nope/load")
        assert missing.status_code == 404

        # an alias moved, then one load call: every worker swaps, no request fails
        with continuous_load(f"{base}/v2/models/iris/infer", _body(ROWS[1])) as seen:
            wait_until(lambda: seen[(200, "1")] >= 20, "answers from version 1")
            subprocess.run(
                [CLI, "alias", "iris@2", "production"], env=cli_env(home), check=True, timeout=60
            )
            load = f"{base}/v2/repository/models/iris/load"
            assert httpx.post(load, timeout=60).status_code == 200
        assert {status for status, _ in seen} == {200}, seen
        assert set(statuses()) == {(200, "2")}


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(home: Path) -> None:
    with running_server(home, ["iris"], ["--workers", "2", "--no-grpc"]) as server:
        before = _wait_for_workers(server, 2)
        victim = min(before)
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        deadline = time.monotonic() + 60
        while len(_workers_of(server.proc.pid) - {victim}) < 2:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert f"pid {victim}) exited with code -9" in server.output()
        url = f"{server.http_url}/v2/models/iris/infer"
        for _ in range(20):
            with httpx.Client(timeout=30) as client:
                assert client.post(url, json=_body(ROWS[2])).status_code == 200
        workers = _workers_of(server.proc.pid)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def test_start_up_errors_are_one_clear_line(home: Path) -> None:
    missing = subprocess.run(
        [CLI, "serve", "nope@1", "--workers", "2", "--http-port", str(free_port())],
        env=cli_env(home), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert missing.returncode == 3, missing.stderr
    assert missing.stderr == "error: no model named 'nope'\n"

    with running_server(home, ["iris"], ["--no-grpc"]) as server:
        busy = server.http_url.rsplit(":", 1)[1]
        http = subprocess.run(
            [CLI, "serve", "iris", "--workers", "2", "--http-port", busy, "--no-grpc"],
            env=cli_env(home), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert http.returncode == 10
        assert http.stderr.startswith(f"error: cannot listen for REST on 127.0.0.1:{busy}")
    with running_server(home, ["iris"]) as server:
        busy = server.grpc_target.rsplit(":", 1)[1]
        grpc = subprocess.run(
            [CLI, "serve", "iris", "--workers", "2", "--http-port", str(free_port()),
             "--grpc-port", busy],
            env=cli_env(home), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert grpc.returncode == 10
        assert grpc.stderr.startswith(f"error: cannot listen for gRPC on 127.0.0.1:{busy}")
        assert "Traceback" not in grpc.stderr


def test_metrics_merge_adds_counters_and_histograms() -> None:
    mine, theirs = ServingMetrics(), ServingMetrics()
    theirs.worker = "1"
    for metrics, count in ((mine, 3), (theirs, 5)):
        for _ in range(count):
            metrics.requests.labels("iris", "1", "rest_v2", "success").inc()
            metrics.batch_size.labels("iris", "1").observe(4)
        metrics.models_loaded.set(1)
        metrics.load_seconds.labels("iris", "1").set(count / 10)
    theirs.requests.labels("add", "1", "grpc_v2", "success").inc()

    text = mine.exposition([theirs.snapshot()]).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    iris = (("model", "iris"), ("outcome", "success"), ("protocol", "rest_v2"), ("version", "1"))
    assert samples[("modelport_requests_total", iris)] == 8
    add = (("model", "add"), ("outcome", "success"), ("protocol", "grpc_v2"), ("version", "1"))
    assert samples[("modelport_requests_total", add)] == 1
    batch = (("model", "iris"), ("version", "1"))
    assert samples[("modelport_batch_size_count", batch)] == 8
    assert samples[("modelport_batch_size_sum", batch)] == 32
    assert samples[("modelport_batch_size_bucket", (("le", "2.0"), *batch))] == 0
    assert samples[("modelport_batch_size_bucket", (("le", "4.0"), *batch))] == 8
    assert samples[("modelport_models_loaded", ())] == 1
    assert samples[("modelport_model_load_seconds", batch)] == 0.5
    workers = {
        dict(k)["worker"] for (name, k) in samples if name == "modelport_worker_memory_bytes"
    }
    assert workers == {"0", "1"}
    # without others, nothing of theirs leaks into later scrapes
    again = mine.exposition().decode()
    assert 'model="add"' not in again


def test_the_sdk_serves_with_workers_from_its_own_settings(home: Path, tmp_path: Path) -> None:
    # No MODELPORT_HOME in the environment: the workers must open the registry the
    # caller's Settings name, not the default one.
    port = free_port()
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelport import Registry, Settings\n"
        "from modelport.serving.config import ServeConfig\n"
        "from modelport.serving.server import run\n"
        "registry = Registry(Settings(home=Path(sys.argv[1])))\n"
        "run(registry, ServeConfig(workers=2, http_port=int(sys.argv[2]), grpc_port=None),"
        " ['iris'])\n"
    )
    env = {k: v for k, v in cli_env(home).items() if k != "MODELPORT_HOME"}
    env["HOME"] = str(tmp_path / "elsewhere")
    log = tmp_path / "sdk.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(home), str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/iris/infer", json=_body(ROWS[0]))
        assert answer.status_code == 200, answer.text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()


def test_watch_and_grpc_repository_calls_with_workers(home: Path, tmp_path: Path) -> None:
    push(home, make_iris_onnx(tmp_path / "iris.onnx", zipmap=False), "iris")  # iris@2
    args = ["--workers", "2", "--watch", "--watch-interval", "0.2"]
    with running_server(home, ["iris@production"], args) as server:
        url = f"{server.http_url}/v2/models/iris/infer"

        def versions(n: int = 30) -> set[tuple[int, str]]:
            seen = set()
            for _ in range(n):
                with httpx.Client(timeout=30) as client:  # a new connection: any worker
                    response = client.post(url, json=_body(ROWS[0]))
                    seen.add((response.status_code, response.json().get("model_version", "")))
            return seen

        assert versions() == {(200, "1")}
        subprocess.run(
            [CLI, "alias", "iris@2", "production"], env=cli_env(home), check=True, timeout=60
        )
        deadline = time.monotonic() + 30
        while versions() != {(200, "2")}:  # every worker follows the alias on its own
            assert time.monotonic() < deadline, server.output()

        client = grpcclient.InferenceServerClient(server.grpc_target)
        client.unload_model("iris")
        assert versions() == {(503, "")}
        client.load_model("iris")
        assert versions() == {(200, "2")}


def test_the_run_directory_is_kept_fresh_for_temp_cleaners(tmp_path: Path) -> None:
    import os
    import socket as sockets

    from modelport.serving.workers import _touch

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    listener = sockets.socket(sockets.AF_UNIX)
    listener.bind(str(run_dir / "worker-0.sock"))
    try:
        old = time.time() - 30 * 86400
        for path in (run_dir, run_dir / "worker-0.sock"):
            os.utime(path, (old, old))
        _touch(run_dir)
        for path in (run_dir, run_dir / "worker-0.sock"):
            assert path.stat().st_mtime > time.time() - 60
    finally:
        listener.close()
