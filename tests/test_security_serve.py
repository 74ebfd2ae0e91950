"""When ``serve`` turns auth on or refuses to start, the failed-auth limit per address, and
revocation reaching every worker process."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from modelport import Registry, Settings
from modelport.security.exposure import is_loopback
from modelport.security.keys import KeyStore
from tests.serving_fixtures import CLI, cli_env, free_port, push, running_server, wait_until


def _registry(home: Path) -> Registry:
    return Registry(Settings(home=home, db_url=None, store_path=None))


def _serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``modelport serve`` expected to refuse to start (a deadline in case it does not)."""
    return subprocess.run(
        [CLI, "serve", "iris@production", "--http-port", str(free_port()), "--no-grpc", *args],
        env=cli_env(home), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory, iris_onnx: Path) -> Path:
    home = tmp_path_factory.mktemp("serve") / "home"
    push(home, iris_onnx, "iris", "production")
    return home


def test_loopback_addresses() -> None:
    for host in ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"]:
        assert is_loopback(host), host
    for host in ["0.0.0.0", "::", "10.0.0.1", "example.com"]:
        assert not is_loopback(host), host


def test_serve_refuses_a_public_address_without_keys_or_with_no_auth(served_home: Path) -> None:
    no_keys = _serve(served_home, "--host", "0.0.0.0")
    assert no_keys.returncode != 0
    assert "no API key exists" in no_keys.stderr
    assert "modelport keys create --name admin --scope admin" in no_keys.stderr
    no_auth = _serve(served_home, "--host", "0.0.0.0", "--no-auth")
    assert no_auth.returncode != 0
    assert "with auth off" in no_auth.stderr and "--insecure" in no_auth.stderr


def test_insecure_starts_with_auth_on_and_limits_failures_per_address(served_home: Path) -> None:
    """0.0.0.0 with --insecure and no key: auth is still on (nobody gets in), liveness is
    open, and an address failing ten times in a minute gets 429 before its key is read."""
    port = free_port()
    log = served_home.parent / "insecure.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [CLI, "serve", "iris@production", "--host", "0.0.0.0", "--insecure",
             "--http-port", str(port), "--no-grpc"],
            env=cli_env(served_home), stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def live() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(live, "the server to be live", timeout=60, poll=0.05)
        assert "auth: on" in log.read_text()
        statuses = []
        with httpx.Client(base_url=url) as client:
            for _ in range(11):
                statuses.append(client.get("/v2/health/ready").status_code)
            refused = client.get("/v2/models/iris", headers={"authorization": "Bearer x"})
        assert statuses == [401] * 10 + [429]
        assert refused.status_code == 429
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert httpx.get(f"{url}/v2/health/live").status_code == 200  # liveness stays open
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_revocation_reaches_every_worker(served_home: Path) -> None:
    with _registry(served_home) as registry:
        store = KeyStore(registry.engine)
        _, key = store.create("worker-check", "read")
    headers = {"authorization": f"Bearer {key}"}
    config = served_home.parent / "workers.toml"
    # Each refusal of the revoked key is a failure from 127.0.0.1: keep the address unblocked.
    config.write_text("[server]\nauth_failures_per_minute = 100000\n")
    args = ["--auth", "--workers", "2", "--config", str(config)]
    with running_server(served_home, ["iris@production"], args, ready_headers=headers) as server:

        def answers(n: int = 20) -> set[int]:
            # A new connection each time, so that both workers answer some.
            return {
                httpx.get(f"{server.http_url}/v2/health/ready", headers=headers).status_code
                for _ in range(n)
            }

        assert answers() == {200}
        with _registry(served_home) as registry:
            KeyStore(registry.engine).revoke("worker-check")
        wait_until(lambda: answers() == {401}, "every worker refusing the revoked key", 10, 0.1)
        with _registry(served_home) as registry:
            _, fresh = KeyStore(registry.engine).create("worker-new", "read")
        headers = {"authorization": f"Bearer {fresh}"}
        wait_until(lambda: answers() == {200}, "every worker accepting a new key", 10, 0.1)


def test_the_config_file_turns_auth_on(tmp_path: Path) -> None:
    from modelport.security.exposure import auth_on
    from modelport.serving.config import ServeConfig, load_config

    path = tmp_path / "serve.toml"
    path.write_text("[server]\nauth = true\ninsecure = false\n")
    assert auth_on(load_config(path))
    assert not auth_on(ServeConfig())
    assert auth_on(ServeConfig(host="0.0.0.0"))
    assert not auth_on(ServeConfig(host="0.0.0.0", auth=False))
