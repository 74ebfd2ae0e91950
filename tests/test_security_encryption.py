"""Encryption at rest: sealed blobs, master keys, rotation, and no plaintext weights on disk.

Real stores (a local directory, moto's S3 server), real SQLite and PostgreSQL databases,
the real CLI and ``modelport serve``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from sqlalchemy import select

from modelport import Registry, Settings
from modelport.errors import EncryptionKeyError, VerificationFailed
from modelport.jobs import Checkout, Produced, derive
from modelport.jobs.inputs import generated_inputs
from modelport.jobs.parity import compare
from modelport.registry import schema
from modelport.registry.db import read_transaction
from modelport.registry.store import EncryptedStore, LocalStore
from modelport.registry.store.base import hash_stream
from modelport.registry.store.encrypted import KeyRow
from modelport.security.crypto import generate_key, master_key, parse_key
from modelport.security.envelope import Opened, seal
from tests.onnx_models import make_matmul_model
from tests.s3_server import CREDENTIALS, moto_s3, object_keys, s3_client
from tests.serving_fixtures import CLI, cli_env, running_server

# Weights whose bytes appear nowhere else: the needle the "no plaintext" greps look for.
WEIGHTS = (np.arange(4 * 64, dtype=np.float32).reshape(4, 64) * 0.0173 + 271.828).astype(np.float32)
NEEDLE = WEIGHTS.tobytes()[:48]
X = np.ones((2, 4), np.float32)


@pytest.fixture(scope="module")
def marked_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MatMul model whose initializer is ``WEIGHTS``."""
    return make_matmul_model(tmp_path_factory.mktemp("marked") / "marked.onnx", WEIGHTS)


@pytest.fixture
def key() -> str:
    return generate_key()


def open_registry(home: Path, key: str | None, **settings: Any) -> Registry:
    return Registry(Settings(home=home, encryption_key=key, **settings))


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def blob_files(home: Path) -> list[Path]:
    return sorted((home / "artifacts" / "blobs").glob("*/*"))


def cli(home: Path, key: str | None, *args: str | Path) -> subprocess.CompletedProcess[str]:
    extra = {"MODELPORT_ENCRYPTION_KEY": key} if key else {}
    return subprocess.run(
        [CLI, *map(str, args)],
        env=cli_env(home, extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- the sealed format -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 64 * 5, 64 * 5 + 7])
def test_seal_then_open_gives_back_the_bytes_and_their_plaintext_digest(size: int) -> None:
    data = os.urandom(size)
    data_key = os.urandom(32)
    sealed = io.BytesIO()

    digest, length = seal(io.BytesIO(data), sealed, data_key, chunk_size=64)

    assert (digest, length) == hash_stream(io.BytesIO(data))
    assert data not in sealed.getvalue() or size < 4
    opened = Opened(io.BytesIO(sealed.getvalue()), data_key, digest)
    assert b"".join(iter(lambda: opened.read(10), b"")) == data


def _sealed(size: int = 64 * 3 + 5) -> tuple[bytes, bytes]:
    data_key = os.urandom(32)
    sealed = io.BytesIO()
    seal(io.BytesIO(os.urandom(size)), sealed, data_key, chunk_size=64)
    return sealed.getvalue(), data_key


HEADER, SEALED_CHUNK = 18, 64 + 16


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], id="flipped-byte"),
        pytest.param(lambda b: b[:6] + b"\x00\x00\x00\x20" + b[10:], id="header-chunk-size"),
        pytest.param(lambda b: b[: HEADER + SEALED_CHUNK], id="cut-at-a-chunk-boundary"),
        pytest.param(lambda b: b[:-1], id="cut-in-the-last-chunk"),
        pytest.param(lambda b: b[:HEADER], id="header-only"),
        pytest.param(lambda b: b + b"x", id="trailing-byte"),
        pytest.param(
            lambda b: (
                b[:HEADER]
                + b[HEADER + SEALED_CHUNK : HEADER + 2 * SEALED_CHUNK]
                + b[HEADER : HEADER + SEALED_CHUNK]
                + b[HEADER + 2 * SEALED_CHUNK :]
            ),
            id="chunks-swapped",
        ),
    ],
)
def test_any_damage_to_a_sealed_stream_is_verification_failed(damage: Any) -> None:
    sealed, data_key = _sealed()

    with pytest.raises(VerificationFailed, match="is damaged"):
        Opened(io.BytesIO(damage(sealed)), data_key, "ab" * 32).read()


def test_the_key_id_names_a_key_without_revealing_it() -> None:
    text = generate_key()
    first, again, other = parse_key(text, source="x"), parse_key(text, source="x"), None
    other = parse_key(generate_key(), source="x")

    assert first.key_id == again.key_id != other.key_id
    assert len(first.key_id) == 16
    assert first.key_id not in first.secret.hex()
    assert text not in repr(first) and first.secret.hex() not in repr(first)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("not base64!", "not base64"), ("c2hvcnQ=", "decodes to 5 bytes")],
)
def test_a_malformed_master_key_is_refused_without_echoing_it(text: str, complaint: str) -> None:
    with pytest.raises(EncryptionKeyError, match=complaint) as caught:
        master_key(Settings(encryption_key=text))

    assert text not in str(caught.value)


def test_a_key_file_works_like_the_variable(tmp_path: Path, key: str) -> None:
    path = tmp_path / "master.key"
    path.write_text(key + "\n")

    from_file = master_key(Settings(encryption_key_file=path))
    from_env = master_key(Settings(encryption_key=key))

    assert from_file is not None and from_env is not None
    assert from_file.key_id == from_env.key_id


# -- a registry with encryption on -----------------------------------------------------------


def test_push_stores_only_ciphertext_and_loads_verifies_and_predicts(
    home: Path, db_url: str, key: str, marked_model: Path
) -> None:
    with open_registry(home, key, db_url=db_url) as registry:
        version = registry.push(marked_model, "marked")
        assert isinstance(registry.store, EncryptedStore)
        model = registry.load("marked")
        try:
            outputs = model.predict({"x": X})
        finally:
            model.close()
        assert registry.verify("marked") == []
        # The decrypted checkout exists while the registry is in use, just not on disk.
        assert files_containing(registry.checkout.root, NEEDLE)
        assert not registry.checkout.root.is_relative_to(home)

    np.testing.assert_allclose(outputs["y"], X @ WEIGHTS, rtol=1e-5)
    (blob,) = blob_files(home)
    assert blob.name == version.files[0].digest  # keyed by the plaintext digest
    assert files_containing(home, NEEDLE) == []


def test_without_the_key_or_with_another_the_error_names_the_key_id(
    home: Path, key: str, marked_model: Path
) -> None:
    key_id = parse_key(key, source="x").key_id
    with open_registry(home, key) as registry:
        registry.push(marked_model, "marked")
    wrong = generate_key()

    with open_registry(home, None) as registry:
        with pytest.raises(EncryptionKeyError, match=f"set MODELPORT_ENCRYPTION_KEY.*{key_id}"):
            registry.load("marked")
        with pytest.raises(EncryptionKeyError, match=key_id):
            registry.verify("marked")
    expected = f"under master key id {key_id}"
    with (
        open_registry(home, wrong) as registry,
        pytest.raises(EncryptionKeyError, match=expected) as caught,
    ):
        registry.load("marked")
    assert key not in str(caught.value) and wrong not in str(caught.value)

    result = cli(home, None, "verify", "marked")
    assert result.returncode == 16, result.stderr
    assert key_id in result.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_tampered_or_truncated_blob_is_verification_failed(
    home: Path, key: str, marked_model: Path, damage: str
) -> None:
    with open_registry(home, key) as registry:
        registry.push(marked_model, "marked")
    (blob,) = blob_files(home)
    blob.chmod(0o644)
    data = blob.read_bytes()
    blob.write_bytes(
        data[:100] + bytes([data[100] ^ 0x40]) + data[101:] if damage == "flip" else data[:-20]
    )

    with open_registry(home, key) as registry:
        (problem,) = registry.verify("marked")
        assert "marked.onnx" in problem and "damaged" in problem
        with pytest.raises(VerificationFailed):
            registry.load("marked")


def test_rotation_rewraps_keys_without_touching_blobs(
    home: Path, key: str, marked_model: Path, iris_onnx: Path, tmp_path: Path
) -> None:
    with open_registry(home, key) as registry:
        registry.push(marked_model, "marked")
        registry.push(iris_onnx, "iris")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in blob_files(home)}
    new_key_file = tmp_path / "new.key"
    made = cli(home, None, "encryption", "generate", "--output", new_key_file)
    assert made.returncode == 0, made.stderr
    assert new_key_file.stat().st_mode & 0o777 == 0o600
    new_id = parse_key(new_key_file.read_text(), source="x").key_id

    rotated = cli(home, key, "encryption", "rotate", "--new-key-file", new_key_file)

    assert rotated.returncode == 0, rotated.stderr
    assert "re-wrapped 2 data key(s)" in rotated.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in blob_files(home)} == before
    with open_registry(home, key) as registry, pytest.raises(EncryptionKeyError, match=new_id):
        registry.load("marked")
    with open_registry(home, None, encryption_key_file=new_key_file) as registry:
        registry.load("marked").close()
        assert registry.verify("iris") == []
        with read_transaction(registry.engine) as conn:
            entry = conn.execute(
                select(schema.audit_log.c.action, schema.audit_log.c.detail).where(
                    schema.audit_log.c.action == "encryption.rotate"
                )
            ).one()
    assert entry.detail["to"] == new_id and entry.detail["rewrapped"] == 2
    status = cli(home, None, "encryption", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert f'"{new_id}": 2' in status.stdout


def test_a_mixed_store_reads_old_plaintext_blobs_as_they_are(
    home: Path, key: str, marked_model: Path, iris_onnx: Path
) -> None:
    with open_registry(home, None) as registry:
        registry.push(iris_onnx, "iris")  # before encryption was turned on
        assert isinstance(registry.store, LocalStore)
    with open_registry(home, key) as registry:
        registry.push(marked_model, "marked")
        registry.push(iris_onnx, "iris-again")  # the same bytes: the plaintext blob is kept
        for name in ("iris", "marked", "iris-again"):
            registry.load(name).close()
    key_id = parse_key(key, source="x").key_id

    status = cli(home, key, "encryption", "status", "--json")

    assert status.returncode == 0, status.stderr
    assert '"plaintext": 1' in status.stdout and f'"{key_id}": 1' in status.stdout
    with open_registry(home, None) as registry:
        registry.load("iris").close()
        with pytest.raises(EncryptionKeyError):
            registry.load("marked")


def test_gc_removes_the_keys_of_removed_blobs_and_a_lost_blob_is_sealed_again(
    home: Path, key: str, marked_model: Path, iris_onnx: Path
) -> None:
    with open_registry(home, key) as registry:
        registry.push(marked_model, "marked")
        registry.push(iris_onnx, "iris")
        registry.delete_model("iris")
        with read_transaction(registry.engine) as conn:
            rows = conn.execute(select(schema.blob_keys.c.digest)).scalars().all()
        assert rows == [registry.get("marked").files[0].digest]
        # A blob gone from the store keeps its row until gc: a new push re-seals under it.
        (blob,) = blob_files(home)
        blob.unlink()
        registry.push(marked_model, "marked")
    with open_registry(home, key) as registry:
        assert registry.verify("marked@2") == []
        registry.load("marked@2").close()


def test_a_large_blob_round_trips_in_bounded_memory(home: Path, key: str) -> None:
    size = 60 * 1024 * 1024

    class Stream:
        """60 MiB of pseudo-random bytes, made as they are read."""

        def __init__(self) -> None:
            self.left = size
            self.rng = np.random.default_rng(7)

        def read(self, n: int = -1, /) -> bytes:
            n = self.left if n < 0 else min(n, self.left)
            self.left -= n
            return self.rng.bytes(n)

    with open_registry(home, key) as registry:
        tracemalloc.start()
        try:
            blob = registry.store.put(Stream())
            with registry.store.get(blob.digest) as opened:
                assert hash_stream(opened) == (blob.digest, size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 24 * 1024 * 1024
    (stored,) = blob_files(home)
    assert stored.stat().st_size > size


# -- serving, jobs and datasets with encryption on ----------------------------------------------


def _same_weights(home: Path) -> Callable[[Checkout, Path], Produced]:
    """A derive job's produce step: the parent's graph again, written to its scratch."""

    def produce(checkout: Checkout, directory: Path) -> Produced:
        assert not directory.is_relative_to(home)  # the job's plaintext stays off the disk
        weights = numpy_helper.to_array(onnx.load(str(checkout.entry)).graph.initializer[0])
        return Produced(make_matmul_model(directory / "model.onnx", weights))

    return produce


def test_serve_predict_optimize_and_datasets_leave_no_plaintext_on_disk(
    home: Path, key: str, marked_model: Path, tmp_path: Path
) -> None:
    env = {"MODELPORT_ENCRYPTION_KEY": key}
    pushed = cli(home, key, "push", marked_model, "--name", "marked")
    assert pushed.returncode == 0, pushed.stderr
    predicted = cli(home, key, "predict", "marked", "--input", '{"x": [[1, 1, 1, 1]]}')
    assert predicted.returncode == 0, predicted.stderr
    np.save(tmp_path / "rows.npy", np.tile(WEIGHTS, (8, 1)))
    with open_registry(home, key) as registry:
        derive(registry, "marked", _same_weights(home), kind="optimize", name="marked-fast",
               check=lambda a, b: compare(a, b, generated_inputs(a.signature)))  # fmt: skip
        registry.datasets.push(tmp_path / "rows.npy", "rows")
        loaded = registry.datasets.load("rows")
        assert NEEDLE in np.ascontiguousarray(loaded.features(), np.float32).tobytes()

    with running_server(home, ["marked", "marked-fast"], ["--workers", "2"], env=env) as server:
        for name in ("marked", "marked-fast"):
            answer = httpx.post(
                f"{server.http_url}/v2/models/{name}/infer",
                json={
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": [2, 4],
                            "data": X.ravel().tolist(),
                        }
                    ]
                },
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            y = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(2, 64)
            np.testing.assert_allclose(y, X @ WEIGHTS, rtol=1e-4)
    assert server.proc.returncode == 0
    shm = Path(f"/dev/shm/modelport-{os.getuid()}")
    assert not (shm / str(server.proc.pid)).exists()  # removed when the server exited

    assert files_containing(home, NEEDLE) == []


def test_an_s3_store_holds_only_ciphertext(
    tmp_path: Path, key: str, marked_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with moto_s3() as endpoint:
        bucket = f"sealed-{os.urandom(4).hex()}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        settings: dict[str, Any] = {
            "store_url": f"s3://{bucket}/team",
            "s3_endpoint_url": endpoint,
        }
        big = np.random.default_rng(5).bytes(12 * 1024 * 1024)  # several upload parts
        with open_registry(tmp_path / "home", key, **settings) as registry:
            registry.push(marked_model, "marked")
            blob = registry.store.put(io.BytesIO(big))
            registry.load("marked").close()
            assert registry.verify("marked") == []
            with registry.store.get(blob.digest) as opened:
                assert hash_stream(opened) == (blob.digest, len(big))
        client = s3_client(endpoint)
        stored = [
            client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in object_keys(endpoint, bucket)
        ]
        with (
            open_registry(tmp_path / "home", None, **settings) as registry,
            pytest.raises(EncryptionKeyError),
        ):
            registry.load("marked")
    assert len(stored) == 2
    assert not any(NEEDLE in data or big[:4096] in data for data in stored)
    assert files_containing(tmp_path / "home", NEEDLE) == []


@pytest.fixture(autouse=True)
def _no_encryption_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENCRYPTION_KEY", "ENCRYPTION_KEY_FILE", "PLAINTEXT_CACHE"):
        monkeypatch.delenv(f"MODELPORT_{name}", raising=False)


def test_tune_servers_get_the_key(home: Path, key: str, marked_model: Path) -> None:
    from modelport.tuning.grid import default_point
    from modelport.tuning.server import serving

    settings = Settings(home=home, encryption_key=key)
    with Registry(settings) as registry:
        registry.push(marked_model, "marked")

    with serving(settings, "marked", "marked", default_point()) as url:
        answer = httpx.post(
            f"{url}/v2/models/marked/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]},
            timeout=30,
        )
    assert answer.status_code == 200, answer.text


# -- where plaintext goes, and the commands' own errors ----------------------------------------


def test_a_plaintext_cache_the_user_names_is_used_and_kept(
    home: Path, key: str, marked_model: Path, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    with open_registry(home, key, plaintext_cache=allowed) as registry:
        registry.push(marked_model, "marked")
        registry.load("marked").close()
        assert registry.checkout.root.is_relative_to(allowed)

    assert files_containing(allowed, NEEDLE)
    assert files_containing(home, NEEDLE) == []


def test_the_directory_of_a_dead_process_is_removed_by_the_next(
    home: Path, key: str, marked_model: Path
) -> None:
    script = (
        "import os, sys\n"
        "from modelport import Registry, Settings\n"
        f"r = Registry(Settings(home={str(home)!r}, encryption_key={key!r}))\n"
        "r.push(sys.argv[1], 'marked'); r.load('marked')\n"
        "print(r.checkout.root, flush=True)\n"
        "os._exit(0)  # dies without running atexit, as a killed process would\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(marked_model)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    left = Path(done.stdout.strip())
    assert files_containing(left, NEEDLE)  # what the dead process decrypted is still there

    with open_registry(home, key) as registry:
        registry.load("marked").close()

    assert not left.exists()


def test_same_new_file_pushed_by_several_processes_at_once(
    home: Path, key: str, marked_model: Path
) -> None:
    procs = [
        subprocess.Popen(
            [CLI, "push", str(marked_model), "--name", f"m{i}"],
            env=cli_env(home, {"MODELPORT_ENCRYPTION_KEY": key}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(3)
    ]
    outputs = [proc.communicate(timeout=120)[0].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs

    with open_registry(home, key) as registry:
        for i in range(3):
            assert registry.verify(f"m{i}") == []
    assert len(blob_files(home)) == 1


def test_the_encryption_commands_refuse_what_they_cannot_do(
    home: Path, key: str, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.key"
    existing.write_text("keep me")

    overwrite = cli(home, None, "encryption", "generate", "--output", existing)
    same = cli(home, key, "encryption", "rotate", "--new-key-env", "MODELPORT_ENCRYPTION_KEY")
    keyless = cli(home, None, "encryption", "rotate", "--new-key-file", existing)
    remote = cli(home, key, "--remote", "http://127.0.0.1:9", "encryption", "status")
    printed = cli(home, None, "encryption", "generate")

    assert overwrite.returncode == 2 and "never overwritten" in overwrite.stderr
    assert existing.read_text() == "keep me"
    assert same.returncode == 2 and "is the current one" in same.stderr
    assert keyless.returncode == 16 and "not base64" in keyless.stderr
    assert remote.returncode == 2 and "without --remote" in remote.stderr
    assert printed.returncode == 0
    assert master_key(Settings(encryption_key=printed.stdout.strip())) is not None


def test_encrypt_existing_seals_old_blobs_and_removes_their_checkouts(
    home: Path, key: str, marked_model: Path, iris_onnx: Path
) -> None:
    with open_registry(home, None) as registry:
        registry.push(marked_model, "marked")
        registry.push(iris_onnx, "iris")
        registry.load("marked").close()  # a plaintext checkout, hard-linked to the blob
        iris_digest = registry.get("iris").files[0].digest
    assert files_containing(home, NEEDLE)
    with open_registry(home, key) as registry:
        # An earlier run interrupted between its two steps: the row, but plaintext bytes.
        assert isinstance(registry.store, EncryptedStore) and registry.store.master
        master = registry.store.master
        registry.store.keys.claim(
            KeyRow(iris_digest, master.wrap(os.urandom(32), iris_digest), master.key_id)
        )

    done = cli(home, key, "encryption", "encrypt-existing")

    assert done.returncode == 0, done.stderr
    assert "encrypted 2 blob(s)" in done.stdout
    assert files_containing(home, NEEDLE) == []
    with open_registry(home, key) as registry:
        for name in ("marked", "iris"):
            assert registry.verify(name) == []
            registry.load(name).close()
    with open_registry(home, None) as registry, pytest.raises(EncryptionKeyError):
        registry.load("iris")
    again = cli(home, key, "encryption", "encrypt-existing")
    assert "encrypted 0 blob(s)" in again.stdout
