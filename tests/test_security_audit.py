"""The audit log: every write leaves an entry with who did it, in the write's own transaction;
the hash chain catches an edited, deleted or moved entry (and, with an anchor, deleted newest
ones); appends from many threads never fork it; load/unload on a real server are recorded;
``modelport audit`` and ``/api/v1/audit`` show and verify it."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton
from sqlalchemy import text

from modelport import Registry, Settings
from modelport.errors import Conflict, InvalidInput
from modelport.registry.store import manifest_key
from modelport.security.audit import (
    ACTIONS,
    GENESIS,
    AuditEntry,
    AuditLog,
    entry_hash,
    parse_since,
)
from modelport.security.principal import Principal, acting_as, local_principal
from tests.conftest import run_cli
from tests.onnx_models import make_iris_onnx
from tests.serving_fixtures import push, push_all, running_server

LOCAL = local_principal().name
DOCS = Path(__file__).parent.parent / "docs" / "audit.md"
CI = Principal("key:ci", scope="write", address="10.0.0.7:5123", key_id="0123456789ab")


def _log(registry: Registry) -> list[tuple[str, str, str, str]]:
    return [(e.actor, e.action, e.target, e.outcome) for e in AuditLog(registry.engine).entries()]


def test_every_registry_write_is_recorded_with_its_actor(
    registry: Registry, iris_onnx: Path
) -> None:
    registry.push(iris_onnx, "iris", aliases=["staging"], tags={"team": "a"})
    with acting_as(CI):
        registry.push(iris_onnx, "iris")
        registry.set_alias("iris@2", "staging", expected_version=1)
        with pytest.raises(Conflict):
            registry.set_alias("iris@1", "staging", expected_version=1)
    registry.set_tags("iris@2", {"stage": "qa"}, remove=["absent"])
    registry.set_tags("iris@1", remove=["team"])
    registry.set_description("iris", "the flower model")
    registry.set_description("iris@staging", "the second one")
    registry.set_metrics("iris@2", {"accuracy": 0.97})
    registry.set_serving_settings("iris@2", {"max_batch_size": 8})
    registry.delete_alias("iris", "staging")
    registry.delete("iris@1")
    registry.push(iris_onnx, "other")
    registry.delete_model("other")

    assert _log(registry) == [
        (LOCAL, "push", "iris@1", "ok"),
        ("key:ci", "push", "iris@2", "ok"),
        ("key:ci", "alias.set", "iris@staging", "ok"),
        ("key:ci", "alias.set", "iris@staging", "refused"),
        (LOCAL, "tags.set", "iris@2", "ok"),
        (LOCAL, "tags.set", "iris@1", "ok"),
        (LOCAL, "description.set", "iris", "ok"),
        (LOCAL, "description.set", "iris@2", "ok"),
        (LOCAL, "metrics.set", "iris@2", "ok"),
        (LOCAL, "serving.set", "iris@2", "ok"),
        (LOCAL, "alias.delete", "iris@staging", "ok"),
        (LOCAL, "version.delete", "iris@1", "ok"),
        (LOCAL, "push", "other@1", "ok"),
        (LOCAL, "model.delete", "other", "ok"),
    ]
    entries = AuditLog(registry.engine).entries()
    first, _, moved, refused, tagged, untagged = entries[:6]
    assert first.detail["aliases"] == ["staging"] and first.detail["tags"] == {"team": "a"}
    assert entries[1].detail["manifest"] == manifest_key(registry.get("iris@2").files)
    assert first.address is None
    assert entries[1].address == "10.0.0.7:5123"
    assert moved.detail == {"alias": "staging", "from": 1, "to": 2, "expected": 1}
    assert refused.detail["expected"] == 1 and "points at iris@2" in refused.detail["error"]
    assert tagged.detail == {"set": {"stage": "qa"}, "removed": [], "before": {}}
    assert untagged.detail == {"set": {}, "removed": ["team"], "before": {"team": "a"}}
    assert entries[-1].detail == {"force": False, "versions": [1]}
    assert AuditLog(registry.engine).verify().ok


def test_a_write_that_fails_leaves_no_entry(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris", aliases=["prod"])
    with pytest.raises(Conflict):
        registry.delete("iris@1")  # an alias points at it: the transaction rolls back

    assert [action for _, action, _, _ in _log(registry)] == ["push"]


def test_gc_records_what_it_removed(home: Path, iris_onnx: Path) -> None:
    with Registry(Settings(home=home)) as registry:
        registry.push(iris_onnx, "iris")
        registry.delete_model("iris")  # sweeps the blobs it no longer needs
        assert registry.gc().blobs_removed == 0  # nothing left: a no-op is not a write

        gcs = AuditLog(registry.engine).entries(action="gc")
    assert len(gcs) == 1
    assert gcs[0].detail["blobs_removed"] >= 1 and gcs[0].detail["bytes_freed"] > 0


def test_dataset_writes_are_recorded(home: Path) -> None:
    with Registry(Settings(home=home)) as registry:
        datasets = registry.datasets
        datasets.builtin("iris")
        with acting_as(CI):
            datasets.split("iris@1", {"train": 0.8, "test": 0.2}, seed=1)
        datasets.set_alias("iris@2", "current")
        datasets.delete("iris@1")
        entries = AuditLog(registry.engine).entries(action="dataset.")  # gc may sweep too
        assert [(e.actor, e.action, e.target, e.outcome) for e in entries] == [
            (LOCAL, "dataset.push", "iris@1", "ok"),
            ("key:ci", "dataset.split", "iris@2", "ok"),
            (LOCAL, "dataset.alias", "iris@current", "ok"),
            (LOCAL, "dataset.delete", "iris@1", "ok"),
        ]
        assert entries[1].detail == {"from": "iris@1", "fractions": {"train": 0.8, "test": 0.2},
                                     "seed": 1}  # fmt: skip
        assert entries[2].detail == {"alias": "current", "to": 2}


def test_entries_filter_by_time_model_actor_action_and_keep_the_newest(
    registry: Registry, iris_onnx: Path
) -> None:
    log = AuditLog(registry.engine)
    registry.push(iris_onnx, "iris")
    registry.push(iris_onnx, "iris_2")  # "_" must not match as a LIKE wildcard
    with acting_as(CI):
        registry.set_alias("iris@1", "prod")
    later = datetime.now(UTC) + timedelta(hours=1)

    assert [e.target for e in log.entries(model="iris")] == ["iris@1", "iris@prod"]
    assert [e.target for e in log.entries(model="iris_")] == []
    assert [e.target for e in log.entries(actor="key:ci")] == ["iris@prod"]
    assert [e.target for e in log.entries(action="push")] == ["iris@1", "iris_2@1"]
    assert [e.target for e in log.entries(limit=2)] == ["iris_2@1", "iris@prod"]
    assert log.entries(since=later) == []
    assert len(log.entries(since=datetime.now(UTC) - timedelta(hours=1))) == 3


@pytest.mark.parametrize(
    ("text", "back"),
    [("30m", timedelta(minutes=30)), ("1h", timedelta(hours=1)), ("2d", timedelta(days=2))],
)
def test_since_reads_spans_back_from_now(text: str, back: timedelta) -> None:
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    assert parse_since(text, now=now) == now - back


def test_since_reads_iso_times_and_refuses_anything_else() -> None:
    assert parse_since("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_since("2026-12-01T10:00:00+01:00") == datetime(2026, 12, 1, 9, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="30m, 1h, 2d, 1w"):
        parse_since("yesterday")


def test_concurrent_appends_never_fork_the_chain(registry: Registry) -> None:
    log = AuditLog(registry.engine)
    threads, each = 6, 15
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            start.wait(timeout=30)
            for n in range(each):
                log.append("model.load", f"m{worker}", detail={"n": n})
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    workers = [threading.Thread(target=append, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert not failures
    check = log.verify()
    assert check.ok, check.problem
    assert check.checked == threads * each
    entries = log.entries()
    assert len({e.prev_hash for e in entries}) == threads * each  # no two share a parent


def test_pushes_from_several_processes_form_one_chain(home: Path, iris_onnx: Path) -> None:
    push_all(home, [(iris_onnx, f"model{n}", ["prod"]) for n in range(3)])

    with Registry(Settings(home=home)) as registry:
        log = AuditLog(registry.engine)
        check = log.verify()
        pushed = sorted(e.target for e in log.entries(action="push"))
    assert check.ok and check.checked == 3, check.problem
    assert pushed == ["model0@1", "model1@1", "model2@1"]


def test_a_detail_json_cannot_hold_as_is_is_stored_as_it_reads_back(registry: Registry) -> None:
    log = AuditLog(registry.engine)
    entry = log.append("gc", detail={"when": datetime(2026, 1, 2, tzinfo=UTC), 3: (1, 2)})

    assert entry.detail == {"when": "2026-01-02 00:00:00+00:00", "3": [1, 2]}
    assert log.entries()[0].detail == entry.detail
    assert log.verify().ok


def test_the_docs_list_every_action_there_is() -> None:
    documented = [
        line.split("|")[1].strip().strip("`")
        for line in DOCS.read_text().splitlines()
        if line.startswith("| `")
    ]
    assert sorted(documented) == sorted(ACTIONS)


# -- tampering --------------------------------------------------------------------------


def _edit(db: sqlite3.Connection) -> int:
    db.execute("UPDATE audit_log SET target = 'iris@9' WHERE id = 2")
    return 2


def _delete(db: sqlite3.Connection) -> int:
    db.execute("DELETE FROM audit_log WHERE id = 2")
    return 3


def _swap(db: sqlite3.Connection) -> int:
    # Rows 2 and 3 trade places: every field moves, ids stay in order.
    columns = "at, actor, action, target, address, outcome, detail, prev_hash, hash"
    two = db.execute(f"SELECT {columns} FROM audit_log WHERE id = 2").fetchone()
    three = db.execute(f"SELECT {columns} FROM audit_log WHERE id = 3").fetchone()
    assignments = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
    db.execute(f"UPDATE audit_log SET {assignments} WHERE id = 2", three)
    db.execute(f"UPDATE audit_log SET {assignments} WHERE id = 3", two)
    return 2


def _rehash(db: sqlite3.Connection) -> int:
    # The edit of a forger who knows the scheme: entry 2 made consistent with itself.
    at, actor, action, address, outcome, detail, prev = db.execute(
        "SELECT at, actor, action, address, outcome, detail, prev_hash FROM audit_log WHERE id = 2"
    ).fetchone()
    forged = AuditEntry(
        at=datetime.fromisoformat(at).replace(tzinfo=UTC), actor=actor, action=action,
        target="iris@9", outcome=outcome, address=address, detail=json.loads(detail),
    )  # fmt: skip
    db.execute(
        "UPDATE audit_log SET target = 'iris@9', hash = ? WHERE id = 2",
        (entry_hash(prev, forged),),
    )
    return 3


TAMPERING: dict[str, Callable[[sqlite3.Connection], int]] = {
    "edited": _edit,
    "deleted": _delete,
    "swapped": _swap,
    "rehashed": _rehash,
}


@pytest.fixture
def four_entries(home: Path, iris_onnx: Path) -> Path:
    """A registry whose audit log holds four entries; the path of its SQLite database."""
    with Registry(Settings(home=home)) as registry:
        registry.push(iris_onnx, "iris")
        registry.set_alias("iris@1", "prod")
        registry.set_tags("iris@1", ["team=a"])
        registry.set_description("iris", "flowers")
    return Path(Settings(home=home).resolved_db_url().removeprefix("sqlite:///"))


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_audit_verify_names_the_first_bad_entry(four_entries: Path, how: str) -> None:
    assert run_cli("audit", "verify").returncode == 0
    with sqlite3.connect(four_entries) as db:
        bad = TAMPERING[how](db)

    result = run_cli("audit", "verify")

    assert result.returncode == 7, result.stderr  # VerificationFailed
    assert f"audit entry {bad} " in result.stderr
    expected = "was edited" if how == "edited" else "was deleted, inserted or moved"
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_deleting_the_newest_entries_is_caught_against_the_head_printed_before(
    four_entries: Path,
) -> None:
    first = run_cli("audit", "verify", "--json")
    assert first.returncode == 0, first.stderr
    head = json.loads(first.stdout)["head"]
    with sqlite3.connect(four_entries) as db:
        db.execute("DELETE FROM audit_log WHERE id = 4")

    assert run_cli("audit", "verify").returncode == 0  # a shorter chain is still a chain
    result = run_cli("audit", "verify", "--expect-head", head)
    assert result.returncode == 7
    assert "newest entries were deleted" in result.stderr


def test_an_empty_log_verifies_with_the_genesis_head(home: Path) -> None:
    with Registry(Settings(home=home)) as registry:
        check = AuditLog(registry.engine).verify()
    assert (check.ok, check.checked, check.head) == (True, 0, GENESIS)


def test_verify_catches_an_edit_on_either_database(registry: Registry, iris_onnx: Path) -> None:
    registry.push(iris_onnx, "iris")
    registry.set_alias("iris@1", "prod")
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'someone' WHERE id = 1"))

    check = AuditLog(registry.engine).verify()

    assert (check.ok, check.bad_id, check.checked) == (False, 1, 0)


# -- the CLI ----------------------------------------------------------------------------


def test_audit_shows_a_table_and_json_with_filters(four_entries: Path) -> None:
    table = run_cli("audit")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["when", "who", "action", "target", "outcome", "address"]
    assert [row.split()[3] for row in rows] == ["push", "alias.set", "tags.set", "description.set"]

    found = json.loads(run_cli("audit", "--json", "--since", "1h", "--model", "iris").stdout)
    assert [e["target"] for e in found] == ["iris@1", "iris@prod", "iris@1", "iris"]
    assert all(e["actor"] == LOCAL for e in found)
    newest = json.loads(run_cli("audit", "--json", "--limit", "1", "--action", "push").stdout)
    assert [e["action"] for e in newest] == ["push"]
    assert json.loads(run_cli("audit", "--json", "--since", "2999-01-01").stdout) == []


def test_audit_refuses_a_time_it_cannot_read(home: Path) -> None:
    result = run_cli("audit", "--since", "last week")
    assert result.returncode != 0
    assert "30m, 1h, 2d, 1w" in result.stderr


# -- a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A server on loopback (auth off) over a home holding iris: its REST URL, its gRPC
    target, and its database file."""
    root = tmp_path_factory.mktemp("audited")
    home = root / "home"
    push(home, make_iris_onnx(root / "iris.onnx", zipmap=False), "iris", "prod")
    with running_server(home, ["iris@prod"]) as server:
        yield server.http_url, server.grpc_target, home / "registry.db"


def _api_entries(url: str, **params: str) -> list[dict[str, object]]:
    response = httpx.get(f"{url}/api/v1/audit", params=params, timeout=30)
    assert response.status_code == 200, response.text
    found: list[dict[str, object]] = response.json()
    return found


def test_load_and_unload_over_rest_and_grpc_are_recorded(served: tuple[str, str, Path]) -> None:
    url, target, _ = served
    before = len(_api_entries(url, model="iris"))
    assert httpx.post(f"{url}/v2/repository/models/iris/unload").status_code == 200
    assert httpx.post(f"{url}/v2/repository/models/iris/load").status_code == 200
    with triton.InferenceServerClient(target) as client:
        client.unload_model("iris")
        client.load_model("iris")
    assert httpx.post(f"{url}/v2/repository/models/nothing/load").status_code == 404

    found = _api_entries(url, action="model.")
    assert [(e["action"], e["target"], e["outcome"]) for e in found] == [
        ("model.unload", "iris", "ok"),
        ("model.load", "iris", "ok"),
        ("model.unload", "iris", "ok"),
        ("model.load", "iris", "ok"),
        ("model.load", "nothing", "failed"),
    ]
    assert all(e["actor"] == "anonymous" for e in found)
    assert all(str(e["address"]).startswith("127.0.0.1:") for e in found)
    assert found[1]["detail"] == {"version": 1}
    assert found[-1]["detail"]["code"] == "not_found"  # type: ignore[index]
    assert len(_api_entries(url, model="iris")) == before + 4


def test_the_api_filters_and_refuses_unknown_parameters(served: tuple[str, str, Path]) -> None:
    url, _, _ = served
    assert [e["action"] for e in _api_entries(url, action="push")] == ["push"]
    assert _api_entries(url, since="2999-01-01") == []
    assert len(_api_entries(url, limit="1")) == 1

    response = httpx.get(f"{url}/api/v1/audit", params={"modle": "iris"}, timeout=30)
    assert response.status_code == 400
    assert "modle" in response.json()["error"]
    bad_limit = httpx.get(f"{url}/api/v1/audit", params={"limit": "0"}, timeout=30)
    assert bad_limit.status_code == 400


def test_verify_over_the_api_and_the_remote_cli_finds_an_edit(
    served: tuple[str, str, Path],
) -> None:
    url, _, database = served
    good = httpx.get(f"{url}/api/v1/audit/verify", timeout=30).json()
    assert good["ok"] is True and good["checked"] >= 1
    with sqlite3.connect(database) as db:
        (original,) = db.execute("SELECT actor FROM audit_log WHERE id = 1").fetchone()
        db.execute("UPDATE audit_log SET actor = 'nobody' WHERE id = 1")
    try:
        bad = httpx.get(f"{url}/api/v1/audit/verify", timeout=30).json()
        remote = run_cli("--remote", url, "audit", "verify")
        listed = run_cli("--remote", url, "audit", "--json", "--limit", "1")
    finally:
        with sqlite3.connect(database) as db:
            db.execute("UPDATE audit_log SET actor = ? WHERE id = 1", (original,))

    assert (bad["ok"], bad["bad_id"], bad["checked"]) == (False, 1, 0)
    assert "was edited" in bad["problem"]
    assert remote.returncode == 7 and "audit entry 1 was edited" in remote.stderr
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1
    assert httpx.get(f"{url}/api/v1/audit/verify", timeout=30).json()["ok"] is True
