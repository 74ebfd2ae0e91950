"""The throwaway PostgreSQL server the backend-parametrized tests run on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, text

from tests import postgres


def test_missing_server_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="need a PostgreSQL server: no initdb"):
        postgres._unavailable("no initdb")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run under CI: no initdb"):
        postgres._unavailable("no initdb")


def test_each_database_is_new_and_the_server_is_loopback_only(
    make_postgres_database: Callable[[], str],
) -> None:
    first, second = make_postgres_database(), make_postgres_database()
    assert first != second
    assert first.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = create_engine(first)
    with engine.connect() as connection:
        assert connection.execute(text("SHOW listen_addresses")).scalar() == "127.0.0.1"
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert connection.execute(text(tables)).scalar() == 0
    engine.dispose()
