"""The Alembic migrations are the schema: they must build exactly what schema.py declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from modelport import Registry, Settings, StorageError
from modelport.registry import db
from modelport.registry.schema import metadata


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    return ScriptDirectory.from_config(config)


def test_head_constant_matches_the_migration_scripts() -> None:
    scripts = _scripts()
    assert scripts.get_current_head() == db.HEAD_REVISION
    assert {rev.revision for rev in scripts.walk_revisions()} == set(db._KNOWN_REVISIONS)


def test_migrations_build_the_declared_schema(db_url: str) -> None:
    db.open_database(db_url).dispose()
    engine = create_engine(db_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = db.open_database(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert set(inspect(connection).get_table_names()) >= {"models", "versions", "files"}
    engine.dispose()


def test_a_database_from_a_newer_modelport_is_refused(db_url: str) -> None:
    db.open_database(db_url).dispose()
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StorageError, match="revision '9999'.*upgrade modelport"):
        db.open_database(db_url)


def test_opening_again_leaves_a_migrated_database_as_it_is(db_url: str) -> None:
    for _ in range(2):
        db.open_database(db_url).dispose()
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (db.HEAD_REVISION,)
        ]
    engine.dispose()


def test_registry_reopens_with_its_data(home: Path, db_url: str, iris_onnx: Path) -> None:
    settings = Settings(home=home, db_url=db_url)
    with Registry(settings) as registry:
        registry.push(iris_onnx, "iris", aliases=["production"])
    with Registry(settings) as registry:
        assert registry.get("iris@production").version == 1


def test_bad_database_urls_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot use the database URL 'nosuchdb://x'"):
        db.open_database("nosuchdb://x")
    with pytest.raises(StorageError, match="cannot use the database URL"):
        db.open_database("not a url")


def test_a_registry_made_at_the_first_schema_opens_with_its_data(
    tmp_path: Path, iris_onnx: Path
) -> None:
    """Upgrade path: a DB left at revision 0001 (with a version in it) opens and keeps it."""
    from alembic import command

    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'registry.db'}")
    with Registry(settings) as registry:
        registry.push(iris_onnx, "iris", aliases=["production"], tags={"team": "vision"})
    engine = create_engine(settings.resolved_db_url())
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
        assert (
            connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
        )
        columns = {c["name"] for c in inspect(connection).get_columns("versions")}
        assert "metadata" not in columns
    engine.dispose()
    with Registry(settings) as registry:
        version = registry.get("iris@production")
        assert version.tags == {"team": "vision"}
        assert version.metadata == {}  # filled in by the migration's default
        assert registry.verify("iris@1") == []
        assert registry.push(iris_onnx, "iris").metadata["ir_version"] > 0
