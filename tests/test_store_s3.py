"""The S3 store through the CLI and a real server, against moto's S3 server on loopback:
push, serve, verify and gc; a push killed mid-upload; two pushes of one model at once; a
tampered object; missing credentials and buckets; an empty database over a full bucket."""

from __future__ import annotations

import io
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.registry.store import References, S3Store
from tests.onnx_models import make_graph_model, tensor
from tests.s3_server import (
    make_bucket,
    moto_s3,
    multipart_uploads,
    object_keys,
    s3_client,
    s3_env,
)
from tests.serving_fixtures import CLI, cli_env, running_server

DEADLINE = 120.0
EXIT_VERIFICATION, EXIT_STORAGE = 7, 9


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    return make_bucket(endpoint)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = x + w with a 40 MiB initializer: three multipart parts."""
    count = 10 * 2**20
    weights = numpy_helper.from_array(np.full(count, 0.5, dtype=np.float32), "w")
    return make_graph_model(
        tmp_path_factory.mktemp("big") / "big.onnx",
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [count])],
        [tensor("y", TensorProto.FLOAT, [count])],
        initializers=[weights],
    )


def cli(home: Path, env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *map(str, args)],
        env=cli_env(home, {"COLUMNS": "200", **env}),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def wait_for(condition: object, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_push_serve_verify_gc_round_trip(
    tmp_path: Path, endpoint: str, bucket: str, iris_onnx: Path
) -> None:
    home, env = tmp_path / "home", s3_env(endpoint, bucket)
    pushed = cli(home, env, "push", iris_onnx, "--name", "iris", "--alias", "production")
    assert pushed.returncode == 0, pushed.stderr
    keys = object_keys(endpoint, bucket)
    assert len(keys) == 1
    assert keys[0].startswith("team/blobs/")
    # The files went to the bucket, not to the local store under MODELPORT_HOME.
    assert not list((home / "artifacts" / "blobs").glob("*/*"))

    verified = cli(home, env, "verify", "--all")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "iris@1: ok" in verified.stdout

    with running_server(home, ["iris@production"], env=env) as server:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
        response = httpx.post(f"{server.http_url}/v2/models/iris/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"]

    removed = cli(home, env, "rm", "iris@1", "--force")
    assert removed.returncode == 0, removed.stderr
    collected = cli(home, {**env, "MODELPORT_GC_GRACE": "0"}, "gc")
    assert collected.returncode == 0, collected.stderr
    assert object_keys(endpoint, bucket) == []
    assert not list((home / "cache" / "checkouts").iterdir())


def test_a_push_killed_mid_upload_leaves_nothing_gc_cannot_clean(
    tmp_path: Path, endpoint: str, bucket: str, big_model: Path
) -> None:
    home, env = tmp_path / "home", s3_env(endpoint, bucket)
    log = tmp_path / "push.log"
    with log.open("wb") as output:
        push = subprocess.Popen(
            [CLI, "push", str(big_model), "--name", "big"],
            env=cli_env(home, env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: push.poll() is not None or multipart_uploads(endpoint, bucket),
            "the push to start its multipart upload",
        )
        assert push.poll() is None, log.read_text()
        push.send_signal(signal.SIGKILL)
    finally:
        push.kill()
        push.wait()
    assert multipart_uploads(endpoint, bucket), "the killed push left no upload to clean"

    listed = cli(home, env, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "big" not in listed.stdout  # nothing was published

    collected = cli(home, {**env, "MODELPORT_GC_GRACE": "0"}, "gc")
    assert collected.returncode == 0, collected.stderr
    assert "1 interrupted push(es)" in collected.stdout
    assert multipart_uploads(endpoint, bucket) == []
    assert object_keys(endpoint, bucket) == []

    again = cli(home, env, "push", big_model, "--name", "big")
    assert again.returncode == 0, again.stderr
    assert cli(home, env, "verify", "big@1").returncode == 0


def test_two_processes_pushing_the_same_model_at_once(
    tmp_path: Path, endpoint: str, bucket: str, big_model: Path
) -> None:
    home, env = tmp_path / "home", s3_env(endpoint, bucket)
    cli(home, env, "ls")  # the database exists before the race: the race is the store's
    pushes = [
        subprocess.Popen(
            [CLI, "push", str(big_model), "--name", "big"],
            env=cli_env(home, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=DEADLINE)[0] for p in pushes]
    codes = sorted(p.returncode for p in pushes)
    # Both stored (the second push of one digest is a no-op) or one got a clean Conflict.
    assert codes in ([0, 0], [0, 4]), outputs
    assert len(object_keys(endpoint, bucket)) == 1
    assert multipart_uploads(endpoint, bucket) == []
    verified = cli(home, env, "verify", "--all")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_tampered_object_is_reported_by_verify(
    tmp_path: Path, endpoint: str, bucket: str, iris_onnx: Path
) -> None:
    home, env = tmp_path / "home", s3_env(endpoint, bucket)
    assert cli(home, env, "push", iris_onnx, "--name", "iris").returncode == 0
    (key,) = object_keys(endpoint, bucket)
    s3_client(endpoint).put_object(Bucket=bucket, Key=key, Body=b"not the model")

    verified = cli(home, env, "verify", "iris@1")
    assert verified.returncode == EXIT_VERIFICATION
    assert "iris@1: DAMAGED" in verified.stdout
    assert "content changed" in verified.stdout

    # Loading downloads through the same check: the bad bytes never reach a runtime.
    loaded = cli(home, env, "predict", "iris", "--input", '{"input": [[5.1, 3.5, 1.4, 0.2]]}')
    assert loaded.returncode == EXIT_VERIFICATION, loaded.stdout + loaded.stderr
    assert "does not match" in loaded.stderr
    assert not list((home / "cache" / "blobs").glob("*/*"))


def test_missing_credentials_name_what_to_set(
    tmp_path: Path, endpoint: str, bucket: str, iris_onnx: Path
) -> None:
    env = {k: v for k, v in s3_env(endpoint, bucket).items() if "ACCESS_KEY" not in k}
    env |= {
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }
    # Only our AWS_* variables: none of the machine's credentials may leak in.
    pushed = subprocess.run(
        [CLI, "push", str(iris_onnx), "--name", "iris"],
        env={
            k: v
            for k, v in cli_env(tmp_path / "home", env).items()
            if not (k.startswith("AWS_") and k not in env)
        },
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert pushed.returncode == EXIT_STORAGE, pushed.stdout + pushed.stderr
    assert "AWS_ACCESS_KEY_ID" in pushed.stderr
    assert "Traceback" not in pushed.stderr


def test_a_missing_bucket_names_the_setting(tmp_path: Path, endpoint: str, iris_onnx: Path) -> None:
    env = s3_env(endpoint, "no-such-bucket")
    pushed = cli(tmp_path / "home", env, "push", iris_onnx, "--name", "iris")
    assert pushed.returncode == EXIT_STORAGE, pushed.stdout + pushed.stderr
    assert "'no-such-bucket' does not exist" in pushed.stderr
    assert "MODELPORT_STORE_URL" in pushed.stderr


def test_an_empty_database_over_a_bucket_that_holds_models_is_refused(
    tmp_path: Path, endpoint: str, bucket: str, iris_onnx: Path
) -> None:
    env = s3_env(endpoint, bucket)
    assert cli(tmp_path / "first", env, "push", iris_onnx, "--name", "iris").returncode == 0
    # A second home: a new, empty SQLite database, with the same bucket.
    listed = cli(tmp_path / "lost", env, "ls")
    assert listed.returncode == EXIT_STORAGE
    assert "is empty" in listed.stderr
    assert f"s3://{bucket}/team" in listed.stderr
    # The bucket under another prefix is another store: a new registry may start there.
    fresh = cli(tmp_path / "other", s3_env(endpoint, bucket, prefix="other"), "ls")
    assert fresh.returncode == 0, fresh.stderr


def test_gc_keeps_what_a_push_may_not_have_committed_yet(endpoint: str, bucket: str) -> None:
    """No lock reaches other machines: an unreferenced object younger than the grace
    period may belong to a push about to commit, so gc leaves it."""
    store = S3Store(
        f"s3://{bucket}/team", endpoint_url=endpoint, grace=3600, client=s3_client(endpoint)
    )
    blob = store.put(io.BytesIO(b"stored, not yet committed"))
    report = store.collect_garbage(lambda: References(frozenset(), frozenset()))
    assert report.blobs_removed == 0
    assert store.exists(blob.digest)
    with store.writing() as writer:
        writer.publish([blob.digest])  # still there: the push may commit
