"""API keys in the registry database and on the command line; the policy table; the limiters."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from modelport import Registry
from modelport.errors import Conflict, InvalidInput, InvalidName, NotFound, Unauthorized
from modelport.registry import schema
from modelport.security.keys import INVALID_KEY, KeyStore, parse_duration, parse_rate
from modelport.security.policy import grpc_rule, http_rule
from modelport.security.ratelimit import Bucket, FailureLimiter
from tests.conftest import run_cli

KEY_RE = re.compile(r"mp_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")


def test_a_key_authenticates_and_every_bad_key_gets_one_message(registry: Registry) -> None:
    store = KeyStore(registry.engine)
    record, key = store.create("ci", "predict", ["iris*"], "30d", "100/s")
    assert KEY_RE.fullmatch(key) and key.split("_")[1] == record.key_id
    assert store.authenticate(key).name == "ci"
    assert record.expires_at is not None and record.rate is not None
    expired_record, expired = store.create("old", "read")
    with registry.engine.begin() as conn:
        conn.execute(
            update(schema.api_keys)
            .where(schema.api_keys.c.name == "old")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    _, revoked = store.create("gone", "admin")
    store.revoke("gone")
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    unknown = f"mp_{'0' * 12}_{key.split('_', 2)[2]}"
    for bad in ["", "nonsense", key + "x", wrong_secret, unknown, expired, revoked]:
        with pytest.raises(Unauthorized) as raised:
            store.authenticate(bad)
        assert raised.value.message == INVALID_KEY, bad
    assert [k.name for k in store.list()] == ["ci", "old"]
    assert {k.name for k in store.list(include_revoked=True)} == {"ci", "old", "gone"}
    assert expired_record.key_id not in store.live_keys()


def test_creating_and_revoking_are_audited_and_names_are_not_reused(registry: Registry) -> None:
    store = KeyStore(registry.engine)
    store.create("ci", "predict", ["iris*"])
    store.revoke("ci")
    with pytest.raises(Conflict, match="revoked already"):
        store.revoke("ci")
    with pytest.raises(Conflict, match="not reused"):
        store.create("ci", "predict")
    with pytest.raises(NotFound, match="no key named 'nope'"):
        store.revoke("nope")
    with registry.engine.connect() as conn:
        rows = conn.execute(
            select(schema.audit_log.c.action, schema.audit_log.c.target, schema.audit_log.c.detail)
        ).all()
    assert [(r.action, r.target) for r in rows] == [("key.create", "ci"), ("key.revoke", "ci")]
    assert rows[0].detail["scope"] == "predict" and rows[0].detail["models"] == ["iris*"]


def test_bad_key_requests_are_clear_errors(registry: Registry) -> None:
    store = KeyStore(registry.engine)
    with pytest.raises(InvalidInput, match="unknown scope 'root'; use one of predict"):
        store.create("a", "root")
    with pytest.raises(InvalidName):
        store.create("no spaces", "read")
    with pytest.raises(InvalidInput, match="write e.g. 30d"):
        store.create("a", "read", expires="soon")
    with pytest.raises(InvalidInput, match="100/s, 6000/m, 10/h"):
        store.create("a", "read", rate="fast")
    with pytest.raises(InvalidInput, match="at least one model pattern"):
        store.create("a", "read", [])
    assert store.list() == []


def test_durations_and_rates() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_rate("100/s").per_second == 100
    assert parse_rate("6000/m").per_second == 100
    assert parse_rate("10/h").per_seconds == 3600
    for bad in ["0d", "5", "1y"]:
        with pytest.raises(InvalidInput):
            parse_duration(bad)
    for bad in ["0/s", "100", "1/d"]:
        with pytest.raises(InvalidInput):
            parse_rate(bad)


def test_the_cli_shows_a_key_once_and_stores_only_its_hash(home: Path) -> None:
    made = run_cli("keys", "create", "--name", "ci", "--scope", "predict", "--models", "iris*")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert KEY_RE.fullmatch(key)
    assert "not shown again" in made.stderr
    as_json = run_cli("keys", "create", "--name", "admin", "--scope", "admin", "--json")
    answer = json.loads(as_json.stdout)
    assert KEY_RE.fullmatch(answer["key"]) and answer["scope"] == "admin"
    listed = run_cli("keys", "ls")
    assert listed.returncode == 0
    assert "ci" in listed.stdout and key.split("_")[1] in listed.stdout
    rows = json.loads(run_cli("keys", "ls", "--json").stdout)
    assert [r["name"] for r in rows] == ["ci", "admin"]
    assert all("key" not in r and "secret_hash" not in r for r in rows)
    secrets = [key.split("_", 2)[2], answer["key"].split("_", 2)[2]]
    for secret in secrets:
        assert secret not in listed.stdout
        for stored in home.rglob("*"):
            if stored.is_file():
                assert secret.encode() not in stored.read_bytes(), stored
    assert run_cli("keys", "revoke", "ci").returncode == 0
    assert [r["name"] for r in json.loads(run_cli("keys", "ls", "--json").stdout)] == ["admin"]
    everything = run_cli("keys", "ls", "--all")
    assert "revoked" in everything.stdout
    bad = run_cli("keys", "create", "--name", "x", "--scope", "root")
    assert bad.returncode != 0 and "unknown scope 'root'" in bad.stderr


@pytest.mark.parametrize(
    ("method", "path", "scope", "model"),
    [
        ("GET", "/v2/health/live", None, None),
        ("POST", "/v2/models/iris/infer", "predict", "iris"),
        ("POST", "/v2/models/iris/versions/3/infer", "predict", "iris"),
        ("GET", "/v2/models/iris/ready", "predict", "iris"),
        ("POST", "/v1/models/iris:predict", "predict", "iris"),
        ("POST", "/v1/models/iris/labels/prod:classify", "predict", "iris"),
        ("GET", "/v2/health/ready", "read", None),
        ("GET", "/metrics", "read", None),
        ("POST", "/v2/repository/index", "read", None),
        ("POST", "/v2/repository/models/iris/unload", "admin", "iris"),
        ("GET", "/api/v1/models", "read", None),
        ("GET", "/api/v1/models/iris/versions/2", "read", "iris"),
        ("HEAD", "/api/v1/models/iris/versions/2/files/model.onnx", "read", "iris"),
        ("POST", "/api/v1/models/iris/versions", "write", "iris"),
        ("PUT", "/api/v1/models/iris/aliases/prod", "write", "iris"),
        ("DELETE", "/api/v1/models/iris", "write", "iris"),
        ("GET", "/api/v1/datasets", "read", None),
        ("POST", "/api/v1/gc", "admin", None),
        ("GET", "/api/v1/keys", "admin", None),
        ("DELETE", "/api/v1/keys/ci", "admin", None),
        ("GET", "/api/v1/audit", "admin", None),
        ("GET", "/openapi.json", "read", None),
        ("GET", "/docs", "read", None),
        ("GET", "/anything/else", "admin", None),
        ("GET", "/api/v2/x", "admin", None),
    ],
)
def test_http_policy(method: str, path: str, scope: str | None, model: str | None) -> None:
    rule = http_rule(method, path)
    assert (rule.scope, rule.model) == (scope, model)


def test_grpc_policy() -> None:
    assert grpc_rule("/inference.GRPCInferenceService/ServerLive").scope is None
    assert grpc_rule("/inference.GRPCInferenceService/ModelInfer").field == "model_name"
    assert grpc_rule("/inference.GRPCInferenceService/NewThing").scope == "admin"
    assert grpc_rule("/grpc.health.v1.Health/Check").scope == "admin"


def test_token_bucket() -> None:
    bucket = Bucket(rate=2.0, burst=2)
    start = bucket._at
    assert bucket.take(start)
    assert bucket.take(start)
    assert bucket.remaining == 0 and bucket.limit == 2
    assert not bucket.take(start)
    assert bucket.retry_after == 1 and bucket.reset == 1
    assert bucket.take(start + 0.5)  # one token back after half a second
    assert not bucket.take(start + 0.5)


def test_failure_limiter_blocks_an_address_for_the_rest_of_its_window() -> None:
    limiter = FailureLimiter(failures=3, window=60, max_addresses=4)
    for _ in range(3):
        assert limiter.blocked_for("10.0.0.1", 0) == 0
        limiter.failed("10.0.0.1", 0)
    assert limiter.blocked_for("10.0.0.1", 10) == 50
    assert limiter.blocked_for("10.0.0.2", 10) == 0
    assert limiter.blocked_for("10.0.0.1", 61) == 0
    for n in range(10):  # memory stays bounded
        limiter.failed(f"10.1.0.{n}", 100)
    assert len(limiter._seen) <= 4


def test_a_flood_of_denials_is_bounded_and_what_was_dropped_is_counted(
    registry: Registry,
) -> None:
    from modelport.security.gate import Denied, Gate

    gate = Gate(registry.engine, max_queued_denials=2, failures_per_minute=1000)
    gate.refresh()
    for port in range(5):
        with pytest.raises(Denied) as raised:
            gate.admit("Bearer nonsense", ("10.0.0.9", port), "read", None, ("GET", "/metrics"))
        assert raised.value.error.code == "unauthorized"
    assert gate.dropped_denials == 3
    gate.close()  # writes what is queued
    with registry.engine.connect() as conn:
        rows = conn.execute(
            select(schema.audit_log.c.actor, schema.audit_log.c.target, schema.audit_log.c.detail)
        ).all()
    assert [(r.actor, r.target) for r in rows] == [
        ("anonymous", "GET /metrics"),
        ("anonymous", "GET /metrics"),
        ("modelport", ""),
    ]
    assert rows[0].detail == {"status": 401, "code": "unauthorized"}
    assert rows[2].detail == {"dropped": 3}


def test_the_gate_forgets_a_revoked_key_at_its_next_refresh(registry: Registry) -> None:
    from modelport.security.gate import Denied, Gate

    store = KeyStore(registry.engine)
    _, key = store.create("ci", "predict", ["iris*"])
    gate = Gate(registry.engine)
    gate.refresh()
    header = f"Bearer {key}"
    client = ("10.0.0.1", 5000)
    admitted = gate.admit(header, client, "predict", "iris", ("POST", "/v2/models/iris/infer"))
    assert admitted.principal.name == "key:ci" and admitted.principal.address == "10.0.0.1:5000"
    assert gate.admit(header, client, "predict", "iris", ("x",)) is admitted  # remembered
    assert gate.admit(header, client, "predict", "iris-big", ("x",)).principal.name == "key:ci"
    with pytest.raises(Denied) as raised:
        gate.admit(header, client, "predict", "other", ("x",))
    assert raised.value.error.code == "forbidden"
    store.revoke("ci")
    gate.refresh()
    with pytest.raises(Denied) as raised:
        gate.admit(header, client, "predict", "iris", ("x",))
    assert raised.value.error.code == "unauthorized"
    gate.close()
