"""The registry over HTTP (/api/v1), against a real `modelport serve` in hub mode: streamed
upload and download with digests, dropped and oversized uploads, hostile paths, alias
compare-and-set under contention, OpenAPI and /docs, listings filtered by the caller."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from modelport import Registry, Settings
from modelport.security.principal import PRINCIPAL_KEY, Principal
from tests.serving_fixtures import CLI, Server, cli_env, running_server, wait_until

LIMIT = 64 * 1024  # max_upload_bytes of the hub under test: a test model is far smaller


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`modelport serve` with no models (hub mode), small upload limit."""
    root = tmp_path_factory.mktemp("hub")
    config = root / "serve.toml"
    config.write_text(f"[server]\nmax_upload_bytes = {LIMIT}\n")
    with running_server(root / "home", [], ["--no-grpc", "--config", str(config)]) as server:
        yield server


@pytest.fixture(scope="module")
def api(hub: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{hub.http_url}/api/v1", timeout=30) as client:
        yield client


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def push_bytes(api: httpx.Client, name: str, files: dict[str, bytes], **options: object) -> dict:  # type: ignore[type-arg]
    upload = api.post("/uploads")
    assert upload.status_code == 201, upload.text
    upload_id = upload.json()["upload"]
    for path, data in files.items():
        sent = api.put(
            f"/uploads/{upload_id}/files/{path}",
            content=data,
            headers={"X-Modelport-Sha256": sha256(data)},
        )
        assert sent.status_code == 201, sent.text
        assert sent.json() == {"path": path, "sha256": sha256(data), "size": len(data)}
    body = {"upload": upload_id, "paths": [next(iter(files))], **options}
    pushed = api.post(f"/models/{name}/versions", json=body)
    assert pushed.status_code == 201, pushed.text
    return pushed.json()  # type: ignore[no-any-return]


def uploads_dir(hub: Server) -> Path:
    return hub.home / "uploads"


def test_hub_mode_serves_the_registry_api_alone(hub: Server) -> None:
    assert httpx.get(f"{hub.http_url}/v2/health/ready").status_code == 200
    assert httpx.post(f"{hub.http_url}/v2/repository/index").json() == []
    assert "registry API (hub)" in hub.output()


def test_serve_aliased_with_no_match_says_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "serve", "--aliased", "nosuch", "--no-grpc", "--http-port", "0"],
        env=cli_env(tmp_path / "home"), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no model has alias 'nosuch'" in result.stderr
    assert "registry API alone" in result.stderr


def test_push_and_download_round_trip_with_digests(api: httpx.Client, iris_onnx: Path) -> None:
    data = iris_onnx.read_bytes()
    record = push_bytes(api, "iris", {"iris.onnx": data}, aliases=["prod"], tags={"team": "a"})
    assert record["ref"].startswith("iris@") and record["aliases"] == ["prod"]
    assert record["files"] == [{"path": "iris.onnx", "sha256": sha256(data), "size": len(data)}]

    files = api.get("/models/iris/versions/prod/files").json()
    assert files == record["files"]
    download = api.get("/models/iris/versions/prod/files/iris.onnx")
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-length"] == str(len(data))
    assert download.headers["x-modelport-sha256"] == sha256(data)
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert download.headers["digest"] == f"sha-256={digest}"
    head = api.head("/models/iris/versions/prod/files/iris.onnx")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))

    missing = api.get("/models/iris/versions/prod/files/other.bin")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert "iris.onnx" in missing.json()["error"]


def test_edits_verify_lineage_and_errors(api: httpx.Client, iris_onnx: Path) -> None:
    record = push_bytes(api, "edits", {"m.onnx": iris_onnx.read_bytes()})
    ref = f"/models/edits/versions/{record['version']}"
    tagged = api.patch(f"{ref}/tags", json={"set": {"a": "1", "b": "2"}, "remove": []}).json()
    assert tagged["tags"] == {"a": "1", "b": "2"}
    assert api.patch(f"{ref}/tags", json={"remove": ["a"]}).json()["tags"] == {"b": "2"}
    assert api.put(f"{ref}/description", json={"description": "v"}).json()["description"] == "v"
    assert api.post(f"{ref}/metrics", json={"metrics": {"acc": 0.9}}).json()["metrics"] == {
        "acc": 0.9
    }
    assert api.post(f"{ref}/verify").json() == {
        "ref": record["ref"], "intact": True, "problems": [],
    }  # fmt: skip
    child = push_bytes(
        api, "edits", {"m.onnx": iris_onnx.read_bytes()},
        lineage={"parent": record["ref"], "operation": "copy", "parameters": {}},
    )  # fmt: skip
    chain = api.get(f"/models/edits/versions/{child['version']}/lineage").json()["lineage"]
    assert [c["ref"] for c in chain] == [child["ref"], record["ref"]]

    bad = api.patch(f"{ref}/tags", content=b"[1]")
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]
    assert api.get("/models/nosuch").json()["code"] == "not_found"
    aliased = api.put("/models/edits/aliases/live", json={"version": child["version"]})
    assert aliased.status_code == 200
    refused = api.delete(f"/models/edits/versions/{child['version']}")
    assert refused.status_code == 409 and "--force" in refused.json()["error"]
    removed = api.delete("/models/edits", params={"force": "true"}).json()["removed"]
    assert len(removed) == 2
    assert api.get("/models/edits").status_code == 404


def test_concurrent_alias_moves_with_compare_and_set_one_wins(
    api: httpx.Client, iris_onnx: Path
) -> None:
    data = iris_onnx.read_bytes()
    first = push_bytes(api, "cas", {"m.onnx": data}, aliases=["prod"])
    targets = [push_bytes(api, "cas", {"m.onnx": data})["version"] for _ in range(3)]
    statuses: Counter[int] = Counter()
    barrier = threading.Barrier(len(targets) * 2)

    def move(version: int) -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=30) as own:
            barrier.wait()
            body = {"version": version, "expected_version": first["version"]}
            statuses[own.put("/models/cas/aliases/prod", json=body).status_code] += 1

    threads = [threading.Thread(target=move, args=(v,)) for v in targets * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == Counter({200: 1, 409: len(threads) - 1})
    now = api.get("/models/cas/versions/prod").json()["version"]
    assert now in targets
    conflict = api.put(
        "/models/cas/aliases/prod", json={"version": first["version"], "expected_version": 0}
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"


def test_a_dropped_upload_leaves_nothing(hub: Server, api: httpx.Client) -> None:
    before = api.get("/models").json()
    upload_id = api.post("/uploads").json()["upload"]
    url = urlsplit(hub.http_url)
    size = 40_000
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            f"PUT /api/v1/uploads/{upload_id}/files/big.onnx HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nContent-Length: {size}\r\n\r\n".encode()
            + b"\x01" * (size // 2)
        )
        partial = uploads_dir(hub) / upload_id / "partial"
        wait_until(lambda: any(partial.iterdir()), "the server writes the partial file")
    # The connection is closed half-way: the partial file goes, nothing is published.
    wait_until(lambda: not any(partial.iterdir()), "the partial file is removed")
    assert not (uploads_dir(hub) / upload_id / "files" / "big.onnx").exists()
    commit = api.post("/models/dropped/versions", json={"upload": upload_id, "paths": ["big.onnx"]})
    assert commit.status_code == 400 and "no file or directory big.onnx" in commit.json()["error"]
    assert api.get("/models").json() == before

    # Abandoned: once older than the expiry, gc removes the upload altogether.
    old = 1_000_000_000
    os.utime(uploads_dir(hub) / upload_id, (old, old))
    report = api.post("/gc").json()
    assert report["uploads_removed"] >= 1
    assert not (uploads_dir(hub) / upload_id).exists()
    assert api.put(f"/uploads/{upload_id}/files/x", content=b"x").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "%2e%2e/escape",
        "a/%2E%2E/%2e%2e/escape",
        "%2Fetc/passwd",
        "a\\..\\escape",
        "nul%00byte",
        "x" * 300,
        "file/then/dir",  # after "file" exists below
    ],
)
def test_hostile_upload_paths_are_refused(hub: Server, api: httpx.Client, path: str) -> None:
    upload_id = api.post("/uploads").json()["upload"]
    api.put(f"/uploads/{upload_id}/files/file", content=b"a file, not a directory")
    answer = api.put(f"/uploads/{upload_id}/files/{path}", content=b"payload")
    # 404: the router itself found no such route ("/" in the upload id's place)
    assert answer.status_code in (400, 404), answer.text
    assert answer.json()["code"] in ("invalid_input", "not_found")
    received = uploads_dir(hub) / upload_id / "files"
    assert [p.name for p in received.rglob("*")] == ["file"]
    assert not any((uploads_dir(hub) / upload_id / "partial").iterdir())
    assert not (uploads_dir(hub) / "escape").exists() and not (hub.home / "escape").exists()
    api.delete(f"/uploads/{upload_id}")


def test_oversized_uploads_are_refused_with_413(hub: Server, api: httpx.Client) -> None:
    upload_id = api.post("/uploads").json()["upload"]
    declared = api.put(f"/uploads/{upload_id}/files/big", content=b"\0" * (LIMIT + 1))
    assert declared.status_code == 413
    assert declared.json()["code"] == "payload_too_large"
    assert "max_upload_bytes" in declared.json()["error"]

    def unannounced() -> Iterator[bytes]:  # chunked: the server finds out as it reads
        for _ in range(LIMIT // 4096 + 2):
            yield b"\0" * 4096

    streamed = api.put(f"/uploads/{upload_id}/files/big", content=unannounced())
    assert streamed.status_code == 413
    upload = uploads_dir(hub) / upload_id
    assert not any((upload / "partial").iterdir()) and not any((upload / "files").iterdir())


def test_a_damaged_upload_is_refused(hub: Server, api: httpx.Client) -> None:
    upload_id = api.post("/uploads").json()["upload"]
    answer = api.put(
        f"/uploads/{upload_id}/files/m.onnx",
        content=b"abc",
        headers={"X-Modelport-Sha256": sha256(b"abd")},
    )
    assert answer.status_code == 400 and "damaged on the way" in answer.json()["error"]
    assert not any((uploads_dir(hub) / upload_id / "files").iterdir())


def test_openapi_describes_every_route(hub: Server) -> None:
    document = httpx.get(f"{hub.http_url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    operations = {
        (method.upper(), path): spec
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
    }
    undescribed = sorted(key for key, spec in operations.items() if spec.get(
        "x-modelport-undescribed"
    ))  # fmt: skip
    assert undescribed == [], f"add these routes to serving/openapi.py OPERATIONS: {undescribed}"
    for expected in [
        ("POST", "/v2/models/{name}/infer"),
        ("POST", "/v1/models/{name}:predict"),
        ("GET", "/metrics"),
        ("PUT", "/api/v1/uploads/{upload}/files/{path}"),
        ("PUT", "/api/v1/models/{name}/aliases/{alias}"),
        ("GET", "/openapi.json"),
    ]:
        assert expected in operations
    assert operations[("GET", "/v2/health/live")]["security"] == []


def test_docs_page_lists_the_routes_with_nothing_from_a_network(hub: Server) -> None:
    page = httpx.get(f"{hub.http_url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/api/v1/models/{name}/versions/{ref}/files/{path}" in page.text
    assert "/v2/models/{name}/infer" in page.text
    assert "http://" not in page.text and "https://" not in page.text


class _AsPrincipal:
    """Stands where the auth wrapper stands: sets the request's principal (see the
    contract in security/principal.py); the auth helper's real wrapper is tested there."""

    def __init__(self, app: object, principal: Principal) -> None:
        self._app = app
        self._principal = principal

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        scope[PRINCIPAL_KEY] = self._principal
        await self._app(scope, receive, send)  # type: ignore[operator]


def test_listing_and_push_follow_the_callers_grant(home: Path, iris_onnx: Path) -> None:
    from starlette.testclient import TestClient

    from modelport.serving.app import create_app
    from modelport.serving.config import ServeConfig
    from modelport.serving.manager import ModelManager
    from modelport.serving.metrics import ServingMetrics

    with Registry(Settings(home=home)) as registry:
        for name in ("iris", "iris-small", "secret"):
            registry.push(iris_onnx, name)
        principal = Principal("key:ci", "write", ("iris*",))
        manager = ModelManager(registry, ServeConfig(), ServingMetrics())
        app = create_app(manager, wrappers=[lambda inner: _AsPrincipal(inner, principal)])
        with TestClient(app) as client:
            names = [m["name"] for m in client.get("/api/v1/models").json()]
            assert names == ["iris", "iris-small"]
            upload = client.post("/api/v1/uploads").json()["upload"]
            client.put(f"/api/v1/uploads/{upload}/files/m.onnx", content=iris_onnx.read_bytes())
            for name in ("secret", "nosuch"):  # the same answer whether or not it exists
                refused = client.post(
                    f"/api/v1/models/{name}/versions", json={"upload": upload, "paths": ["m.onnx"]}
                )
                assert refused.status_code == 403
                assert refused.json() == {
                    "error": f"this key may not use model {name!r}",
                    "code": "forbidden",
                }
            allowed = client.post(
                "/api/v1/models/iris/versions", json={"upload": upload, "paths": ["m.onnx"]}
            )
            assert allowed.status_code == 201, allowed.text
        assert [v.version for v in registry.list_versions("iris")] == [1, 2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"paths": []}, "'paths' must list"),
        ({"paths": ["m.onnx"], "aliases": [1]}, "'aliases' must be a list of strings"),
        ({"paths": ["m.onnx"], "signature": {"inputs": [{}]}}, "'signature' is not a signature"),
        ({"paths": ["m.onnx"], "lineage": {"parent": 3}}, "'lineage' must be"),
        ({"paths": ["../m.onnx"]}, "not a plain relative path"),
        ({"paths": ["other.onnx"]}, "no file or directory other.onnx"),
    ],
)
def test_a_bad_push_request_is_a_400_and_keeps_the_upload(
    api: httpx.Client, iris_onnx: Path, options: dict[str, object], message: str
) -> None:
    upload_id = api.post("/uploads").json()["upload"]
    api.put(f"/uploads/{upload_id}/files/m.onnx", content=iris_onnx.read_bytes())
    refused = api.post("/models/badpush/versions", json={"upload": upload_id, **options})
    assert refused.status_code == 400, refused.text
    assert message in refused.json()["error"]
    # Nothing lost: the same upload commits once the request is right.
    fixed = api.post("/models/badpush/versions", json={"upload": upload_id, "paths": ["m.onnx"]})
    assert fixed.status_code == 201, fixed.text
    assert (
        api.post(
            "/models/badpush/versions", json={"upload": upload_id, "paths": ["m.onnx"]}
        ).status_code
        == 404
    )
