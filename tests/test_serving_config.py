"""The serve TOML file and size strings: what is accepted, and how errors read."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport import InvalidInput
from modelport.serving.config import ServeConfig, load_config, parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 2**30),
        ("512MB", 512 * 10**6),
        ("1e9", 10**9),
        ("100", 100),
        ("1.5 KiB", 1536),
        (42, 42),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "8 parsecs", "", "GiB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a size"):
        parse_bytes(text)


def _load(tmp_path: Path, text: str) -> ServeConfig:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return load_config(path)


def test_defaults_apply_to_every_model_unless_overridden(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[defaults]\ninstances = 2\n\n[models.a]\n\n[models.b]\ninstances = 3\nref = "b@prod"\n',
    )
    assert config.model_settings("a").instances == 2
    assert config.model_settings("b").instances == 3
    assert config.models["a"].ref == "a"
    assert config.models["b"].ref == "b@prod"
    assert config.model_settings("unlisted") == config.defaults


def test_batch_bytes_take_sizes(tmp_path: Path) -> None:
    config = _load(
        tmp_path, '[defaults]\nmax_batch_bytes = "4MiB"\n\n[models.a]\nmax_batch_bytes = 0\n'
    )
    assert config.defaults.max_batch_bytes == 4 * 2**20
    assert config.model_settings("a").max_batch_bytes == 0  # no byte limit
    assert ServeConfig().defaults.max_batch_bytes == 4 * 2**20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\n", "invalid TOML"),
        ("[servers]\n", "unknown section"),
        ("[server]\nhttp_prot = 1\n", "http_prot: Extra inputs are not permitted"),
        ("[models.a]\ninstances = -1\n", "models.a.instances"),
        ('[models.a]\nref = "../x"\n', "path separator"),
        ('[server]\nmemory_budget = "lots"\n', "is not a size"),
        ('[defaults]\nmax_batch_bytes = "big"\n', "is not a size"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _load(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("key", ["response_cache_size", "cache_size"])
def test_the_response_cache_size_is_read_under_its_new_and_old_names(
    tmp_path: Path, key: str
) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(f"[defaults]\n{key} = 5\n[models.iris]\n{key} = 7\n[models.cnn]\n")
    config = load_config(path)
    assert config.model_settings("iris").response_cache_size == 7
    assert config.model_settings("cnn").response_cache_size == 5


def test_default_instances_are_one_single_threaded_stream_per_core() -> None:
    import os

    from modelport.serving.config import ModelServeConfig

    auto = ModelServeConfig()
    cores = os.cpu_count() or 1
    assert auto.instance_count() == max(1, min(4, cores))
    assert auto.thread_count() == (1 if auto.instance_count() > 1 else 0)
    assert ModelServeConfig(instances=1).thread_count() == 0  # the runtime picks its threads
    assert ModelServeConfig(instances=3, threads=2).thread_count() == 2


def test_worker_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    config_file = tmp_path / "serve.toml"
    config_file.write_text("[server]\nworkers = 3\n")
    assert load_config(config_file).process_count() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert ServeConfig(workers=0).process_count() == 2
    assert ServeConfig().process_count() == 1


def test_the_config_files_host_is_not_overridden_by_the_flags_default(
    tmp_path: Path, iris_onnx: Path
) -> None:
    """`host` under [server] is where the server listens unless --host says otherwise (the
    flag's default used to replace it, so a config file could never set the address)."""
    import subprocess
    import time

    import httpx

    from tests.serving_fixtures import CLI, cli_env, free_port, push

    home = tmp_path / "home"
    push(home, iris_onnx, "iris")
    port = free_port()
    config_file = tmp_path / "serve.toml"
    config_file.write_text(f'[server]\nhost = "127.0.0.2"\nhttp_port = {port}\n')
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [CLI, "serve", "iris", "--config", str(config_file), "--no-grpc"],
            env=cli_env(home),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.2:{port}/v2/health/ready").status_code == 200
            except httpx.TransportError:
                time.sleep(0.05)
        assert ready, log.read_text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/v2/health/live")
    finally:
        proc.terminate()
        proc.wait(30)
