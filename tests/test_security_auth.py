"""Auth on every route and RPC: a real ``modelport serve --auth``, real keys, real clients.

The tables below are data: every REST route of the app (walked from ``create_app``) and
every RPC of ``inference.GRPCInferenceService`` (from its descriptor) must have a row, so a
route added later without one fails ``test_every_route_has_a_row``. Each row is tried with
no key, a wrong key, an expired key, a revoked key, a key of too low a scope, a key without
the model, and the right key.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.routing import Route

from modelport import Registry, Settings
from modelport._generated import grpc_predict_v2_pb2 as pb
from modelport.registry import schema
from modelport.security.keys import KeyStore
from modelport.serving.app import create_app
from modelport.serving.config import ServeConfig
from modelport.serving.manager import ModelManager
from modelport.serving.metrics import ServingMetrics
from tests.serving_fixtures import CLI, Server, cli_env, running_server, wait_until

# -- the tables (extend them when a route or RPC is added) ---------------------------------
# kind: "open", or the scope a request needs; "+model": the path's {name} is the model it
# addresses (checked against the key's grant).
# A row is the kind for every method of the path, or one kind per method.
_API_MODEL = {"GET": "read+model", "HEAD": "read+model"}
_API_OTHER = {"GET": "read", "HEAD": "read"}


def _api(path_kind: dict[str, str], other: str) -> dict[str, str]:
    return {**path_kind, "*": other}


REST_TABLE: dict[str, str | dict[str, str]] = {
    "/v2/health/live": "open",
    "/v2/health/ready": "read",
    "/v2": "read",
    "/metrics": "read",
    "/v2/models/{name}": "predict+model",
    "/v2/models/{name}/versions/{version}": "predict+model",
    "/v2/models/{name}/ready": "predict+model",
    "/v2/models/{name}/versions/{version}/ready": "predict+model",
    "/v2/models/{name}/config": "predict+model",
    "/v2/models/{name}/versions/{version}/config": "predict+model",
    "/v2/models/{name}/infer": "predict+model",
    "/v2/models/{name}/versions/{version}/infer": "predict+model",
    "/v2/repository/index": "read",
    "/v2/repository/models/{name}/load": "admin+model",
    "/v2/repository/models/{name}/unload": "admin+model",
    "/v1/models/{name}": "predict+model",
    "/v1/models/{name}/metadata": "predict+model",
    "/v1/models/{name}:predict": "predict+model",
    "/v1/models/{name}/versions/{version}": "predict+model",
    "/v1/models/{name}/versions/{version}/metadata": "predict+model",
    "/v1/models/{name}/versions/{version}:predict": "predict+model",
    "/v1/models/{name}/labels/{label}": "predict+model",
    "/v1/models/{name}/labels/{label}/metadata": "predict+model",
    "/v1/models/{name}/labels/{label}:predict": "predict+model",
    "/v1/models/{rest:path}": "predict+model",
    "/api/v1/keys": "admin",
    "/api/v1/keys/{name}": "admin",
    "/api/v1/audit": "admin",
    "/api/v1/audit/verify": "admin",
    "/api/v1/gc": "admin",
    "/openapi.json": "read",
    "/docs": "read",
    "/api/v1/models": "read",
    "/api/v1/models/{name}": _api(_API_MODEL, "write+model"),
    "/api/v1/models/{name}/description": "write+model",
    "/api/v1/models/{name}/aliases/{alias}": "write+model",
    "/api/v1/models/{name}/versions": "write+model",
    "/api/v1/models/{name}/versions/{ref}": _api(_API_MODEL, "write+model"),
    "/api/v1/models/{name}/versions/{ref}/serving": "write+model",
    "/api/v1/models/{name}/versions/{ref}/lineage": "read+model",
    "/api/v1/models/{name}/versions/{ref}/verify": "write+model",
    "/api/v1/models/{name}/versions/{ref}/tags": "write+model",
    "/api/v1/models/{name}/versions/{ref}/description": "write+model",
    "/api/v1/models/{name}/versions/{ref}/metrics": "write+model",
    "/api/v1/models/{name}/versions/{ref}/files": "read+model",
    "/api/v1/models/{name}/versions/{ref}/files/{path:path}": "read+model",
    "/api/v1/uploads": "write",
    "/api/v1/uploads/{upload}": "write",
    "/api/v1/uploads/{upload}/files/{path:path}": "write",
    "/api/v1/datasets": "read",
    "/api/v1/datasets/{name}/versions": "write",
    "/api/v1/datasets/{name}/builtin": "write",
    "/api/v1/datasets/{name}/versions/{ref}/split": "write",
    "/api/v1/datasets/{name}": _api(_API_OTHER, "write"),
    "/api/v1/datasets/{name}/aliases/{alias}": "write",
    "/api/v1/datasets/{name}/versions/{ref}": _api(_API_OTHER, "write"),
    "/api/v1/datasets/{name}/versions/{ref}/verify": "write",
    "/api/v1/datasets/{name}/versions/{ref}/files/{path:path}": "read",
}


def _kind(method: str, path: str) -> str:
    row = REST_TABLE[path]
    return row if isinstance(row, str) else row.get(method, row["*"])


# Paths that reach the app without a Starlette route of their own (InferFirst's fast path,
# TF Serving's verbs): tried as well.
EXTRA_REST: list[tuple[str, str, str]] = [
    ("POST", "/v2/models/{name}/infer", "predict+model"),
    ("POST", "/v1/models/{name}:classify", "predict+model"),
    ("POST", "/v1/models/{name}:regress", "predict+model"),
    ("GET", "/no/such/route", "admin"),  # no rule: admin only, then 404
]

GRPC_TABLE: dict[str, tuple[str, str | None]] = {
    "ServerLive": ("open", None),
    "ServerReady": ("read", None),
    "ServerMetadata": ("read", None),
    "RepositoryIndex": ("read", None),
    "ModelReady": ("predict", "name"),
    "ModelMetadata": ("predict", "name"),
    "ModelConfig": ("predict", "name"),
    "ModelInfer": ("predict", "model_name"),
    "RepositoryModelLoad": ("admin", "model_name"),
    "RepositoryModelUnload": ("admin", "model_name"),
}

CASES = ["no key", "wrong key", "expired", "revoked", "wrong scope", "wrong model", "right key"]
LOWER = {"read": "predict", "write": "read", "admin": "write"}
KEY_RE = re.compile(r"mp_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


@dataclass
class Deployment:
    server: Server
    keys: dict[str, str]
    home: Path


def _registry(home: Path) -> Registry:
    return Registry(Settings(home=home, db_url=None, store_path=None))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, iris_onnx: Path) -> Iterator[Deployment]:
    """A server with auth on (loopback + --auth) serving ``iris`` and ``other``, and keys."""
    root = tmp_path_factory.mktemp("auth")
    home = root / "home"
    keys: dict[str, str] = {}
    with _registry(home) as registry:
        for name in ("iris", "other"):
            registry.push([iris_onnx], name, aliases=["production"])
        store = KeyStore(registry.engine)
        for name, scope, models, rate in [
            ("admin", "admin", ["*"], None),
            ("write", "write", ["*"], None),
            ("read", "read", ["*"], None),
            ("predict", "predict", ["*"], None),
            ("admin-iris", "admin", ["iris*"], None),
            ("write-iris", "write", ["iris*"], None),
            ("read-iris", "read", ["iris*"], None),
            ("predict-iris", "predict", ["iris*"], None),
            ("expired", "admin", ["*"], None),
            ("revoked", "admin", ["*"], None),
            ("limited", "predict", ["*"], "2/m"),
            ("limited-grpc", "predict", ["*"], "1/m"),
        ]:
            keys[name] = store.create(name, scope, models, None, rate)[1]
        store.revoke("revoked")
        with registry.engine.begin() as conn:
            conn.execute(
                update(schema.api_keys)
                .where(schema.api_keys.c.name == "expired")
                .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
            )
    config = root / "serve.toml"
    # The table sends many bad keys from one address: lift the failed-auth limit here (its
    # own test below uses the default).
    config.write_text("[server]\nauth_failures_per_minute = 100000\n")
    headers = {"authorization": f"Bearer {keys['admin']}"}
    with running_server(
        home,
        ["iris@production", "other@production"],
        ["--auth", "--config", str(config)],
        ready_headers=headers,
    ) as server:
        yield Deployment(server, keys, home)


def _app_routes(home: Path) -> list[tuple[str, str]]:
    """Every (method, path template) of the app ``create_app`` builds."""
    with _registry(home) as registry:
        manager = ModelManager(registry, ServeConfig(), ServingMetrics())
        app: object = create_app(manager)
        while not isinstance(app, Starlette):  # ErrorBoundary -> InferFirst -> Starlette
            app = app._app  # type: ignore[attr-defined]
        found = []
        for route in app.routes:
            assert isinstance(route, Route), f"a route kind this test cannot walk: {route!r}"
            for method in sorted(route.methods or {"GET"}):
                found.append((method, route.path))
        return found


def test_every_route_has_a_row(deployment: Deployment) -> None:
    missing = [f"{m} {p}" for m, p in _app_routes(deployment.home) if p not in REST_TABLE]
    assert not missing, f"routes without a row in REST_TABLE (and an auth rule): {missing}"
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rpcs = [m.name for m in service.methods if m.name not in GRPC_TABLE]
    assert not rpcs, f"RPCs without a row in GRPC_TABLE (and an auth rule): {rpcs}"


def _fill(template: str, model: str) -> str:
    return (
        template.replace("{name}", model)
        .replace("{version}", "1")
        .replace("{label}", "production")
        .replace("{rest:path}", f"{model}:classify")
        # The registry API's: names that exist nowhere, so no right-key request changes
        # anything (an aliased version and a model with aliases refuse deletion: 409).
        .replace("{ref}", "1")
        .replace("{alias}", "staging")
        .replace("{upload}", "nosuch")
        .replace("{path:path}", "model.onnx")
    )


def _credential(case: str, needed: str, keys: dict[str, str]) -> tuple[str | None, str]:
    """The key for ``case`` on a route needing ``needed``, and the model to address."""
    if case == "no key":
        return None, "iris"
    if case == "wrong key":
        real = keys["admin"]
        return real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"), "iris"
    if case in ("expired", "revoked"):
        return keys[case], "iris"
    if case == "wrong scope":
        return keys[LOWER[needed]], "iris"
    if case == "wrong model":
        return keys[f"{needed}-iris"], "other"
    return keys[f"{needed}-iris"], "iris"


def _expected(case: str, kind: str) -> int | None:
    """The status expected; None: any but 401/403/429 (the request got past auth)."""
    needed, _, addressed = kind.partition("+")
    if kind == "open" or case == "right key":
        return None
    if case == "wrong scope":
        return 403 if needed in LOWER else -1
    if case == "wrong model":
        return 403 if addressed else -1
    return 401


def _rest_rows(home: Path) -> list[tuple[str, str, str]]:
    rows = [(m, p, _kind(m, p)) for m, p in _app_routes(home)]
    rows += EXTRA_REST
    return rows


def test_rest_route_table(deployment: Deployment) -> None:
    failures = []
    tried = 0
    with httpx.Client(base_url=deployment.server.http_url, timeout=30) as client:
        for method, template, kind in _rest_rows(deployment.home):
            needed = kind.partition("+")[0]
            for case in CASES:
                expected = _expected(case, kind)
                if expected == -1:
                    continue  # no such case for this route (no lower scope, no model)
                key, model = (
                    _credential(case, needed, deployment.keys)
                    if needed != "open"
                    else (
                        None,
                        "iris",
                    )
                )
                if "/unload" in template or "/load" in template:
                    model = {"iris": "iris-nosuch", "other": "other"}[model]  # keep iris loaded
                path = _fill(template, model)
                headers = {"authorization": f"Bearer {key}"} if key else {}
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                response = client.request(method, path, headers=headers, content=body)
                tried += 1
                status = response.status_code
                ok = status not in (401, 403, 429) if expected is None else status == expected
                if ok and status in (401, 403) and method != "HEAD":
                    ok = response.json()["code"] == (
                        "unauthorized" if status == 401 else "forbidden"
                    )
                    ok = ok and (
                        status != 401 or "bearer" in response.headers["www-authenticate"].lower()
                    )
                if not ok:
                    failures.append(f"{method} {path} [{case}]: {status} {response.text[:120]}")
    assert tried > 150
    assert not failures, "\n".join(failures)


def _grpc_call(
    channel: grpc.Channel, method: str, field: str | None, model: str, key: str | None
) -> grpc.StatusCode:
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[method]
    request_class = getattr(pb, descriptor.input_type.name)
    response_class = getattr(pb, descriptor.output_type.name)
    request = request_class()
    if field:
        setattr(request, field, model)
    call = channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    metadata = [("authorization", f"Bearer {key}")] if key else []
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            trailing = dict(exc.trailing_metadata())  # type: ignore[attr-defined]
            assert trailing["modelport-error"] in ("unauthorized", "forbidden")
        return code
    return grpc.StatusCode.OK


def test_grpc_rpc_table(deployment: Deployment) -> None:
    denied = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}
    failures = []
    with grpc.insecure_channel(deployment.server.grpc_target) as channel:
        for method, (needed, field) in GRPC_TABLE.items():
            kind = f"{needed}+model" if field else needed
            for case in CASES:
                expected = _expected(case, kind)
                if expected == -1:
                    continue
                key, model = (
                    _credential(case, needed, deployment.keys)
                    if needed != "open"
                    else (None, "iris")
                )
                if method.startswith("RepositoryModel"):
                    model = {"iris": "iris-nosuch", "other": "other"}[model]
                code = _grpc_call(channel, method, field, model, key)
                if expected is None:
                    ok = code not in (*denied.values(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                else:
                    ok = code == denied[expected]
                if not ok:
                    failures.append(f"{method} [{case}]: {code}")
    assert not failures, "\n".join(failures)


def test_a_denial_names_no_model_it_does_not_grant(deployment: Deployment) -> None:
    headers = {"authorization": f"Bearer {deployment.keys['predict-iris']}"}
    url = deployment.server.http_url
    existing = httpx.get(f"{url}/v2/models/other", headers=headers)
    missing = httpx.get(f"{url}/v2/models/nosuch", headers=headers)
    assert existing.status_code == missing.status_code == 403
    assert existing.json()["error"].replace("other", "X") == missing.json()["error"].replace(
        "nosuch", "X"
    )


def test_rest_rate_limit_answers_429_with_headers(deployment: Deployment) -> None:
    headers = {"authorization": f"Bearer {deployment.keys['limited']}"}
    url = f"{deployment.server.http_url}/v2/models/iris"
    with httpx.Client(headers=headers) as client:
        first = client.get(url)
        assert first.status_code == 200
        assert "ratelimit-limit" not in first.headers  # sent once half the burst is used
        second = client.get(url)
        assert second.status_code == 200
        assert second.headers["ratelimit-limit"] == "2"
        assert second.headers["ratelimit-remaining"] == "0"
        assert int(second.headers["ratelimit-reset"]) >= 1
        refused = client.get(url)
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) >= 1


def test_grpc_rate_limit_is_resource_exhausted(deployment: Deployment) -> None:
    key = deployment.keys["limited-grpc"]
    with grpc.insecure_channel(deployment.server.grpc_target) as channel:
        assert _grpc_call(channel, "ModelReady", "name", "iris", key) == grpc.StatusCode.OK
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            call(pb.ModelReadyRequest(name="iris"), metadata=[("authorization", f"Bearer {key}")])
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    trailing = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    assert trailing["modelport-error"] == "rate_limited"
    assert int(trailing["retry-after"]) >= 1


def test_tritonclient_sends_the_key_as_a_header(deployment: Deployment) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    headers = {"authorization": f"Bearer {deployment.keys['predict-iris']}"}
    grpc_client = triton_grpc.InferenceServerClient(deployment.server.grpc_target)
    assert grpc_client.is_model_ready("iris", headers=headers)
    http_client = triton_http.InferenceServerClient(deployment.server.http_url[7:])
    assert http_client.is_model_ready("iris", headers=headers)


def test_denied_requests_reach_the_audit_log(deployment: Deployment) -> None:
    path = "/v2/models/audit-probe"
    assert httpx.get(f"{deployment.server.http_url}{path}").status_code == 401

    def logged() -> bool:
        with _registry(deployment.home) as registry, registry.engine.connect() as conn:
            table = schema.audit_log
            rows = conn.execute(
                select(table.c.action, table.c.outcome, table.c.detail).where(
                    table.c.target == f"GET {path}"
                )
            ).all()
        return any(r.action == "request.denied" and r.detail["status"] == 401 for r in rows)

    wait_until(logged, "the denied request in the audit log", timeout=30, poll=0.2)


def test_keys_over_the_api_and_the_remote_cli(deployment: Deployment) -> None:
    url = deployment.server.http_url
    env = cli_env(
        deployment.home, {"MODELPORT_REMOTE": url, "MODELPORT_API_KEY": deployment.keys["admin"]}
    )
    made = subprocess.run(
        [CLI, "keys", "create", "--name", "remote-ci", "--scope", "predict", "--json"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    answer = json.loads(made.stdout)
    assert KEY_RE.fullmatch(answer["key"]) and answer["created_by"] == "key:admin"
    listed = subprocess.run(
        [CLI, "keys", "ls", "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "remote-ci" in [k["name"] for k in json.loads(listed.stdout)]
    assert answer["key"].split("_")[2] not in listed.stdout
    # A key of lower scope may not manage keys.
    denied = httpx.get(
        f"{url}/api/v1/keys", headers={"authorization": f"Bearer {deployment.keys['write']}"}
    )
    assert denied.status_code == 403
    revoked = subprocess.run(
        [CLI, "keys", "revoke", "remote-ci"], env=env, capture_output=True, text=True, check=False
    )
    assert revoked.returncode == 0, revoked.stderr
    again = subprocess.run(
        [CLI, "keys", "revoke", "remote-ci"], env=env, capture_output=True, text=True, check=False
    )
    assert again.returncode != 0 and "revoked already" in again.stderr
