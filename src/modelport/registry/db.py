"""Opening the metadata database: engine set-up, SQLite pragmas, and schema migrations."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError, StatementError

from modelport.errors import StorageError

__all__ = [
    "HEAD_REVISION",
    "database_error_text",
    "open_database",
    "read_transaction",
    "write_transaction",
]

# The newest migration in migrations/versions; a test keeps the two in step. Checking it
# against the DB without importing Alembic keeps every CLI start fast.
HEAD_REVISION = "0005"
_KNOWN_REVISIONS = ("0001", "0002", "0003", "0004", "0005")
_MIGRATIONS = Path(__file__).parent / "migrations"
_WRITE_LOCK = 7263301  # PostgreSQL advisory lock key held by every write transaction
_BACKGROUND_LINK = re.compile(r"\s*\(Background on this error at: \S+\)")


def database_error_text(exc: SQLAlchemyError) -> str:
    """What a database error says, in one line, for a ``StorageError`` message.

    SQLAlchemy's own text spreads over lines (the statement, its parameters, a link to
    background reading); the CLI prints every error on one line, and the driver's message
    is the part that tells the user what happened.
    """
    cause: BaseException = exc
    if isinstance(exc, StatementError) and exc.orig is not None:
        cause = exc.orig
    text = " ".join(_BACKGROUND_LINK.sub("", str(cause)).split())
    return text or type(cause).__name__


def open_database(url: str, *, holding_store: Callable[[], str | None] | None = None) -> Engine:
    """Create an engine for ``url`` and bring its schema up to ``HEAD_REVISION``.

    SQLite runs in WAL mode so readers never wait for a writer, with foreign keys on and
    a generous busy timeout so concurrent pushes queue rather than fail.

    ``holding_store`` names the artifact store when it already holds stored files (asked
    only of a database with no schema, so an ordinary open reads no directory). Such a
    database is then not a new registry but a lost one (a file truncated by
    a full disk, a bad restore): it is refused, since a registry started afresh over those
    files would reuse their version numbers, and its first gc would delete them all.

    Raises:
        StorageError: the database cannot be opened, was made by a newer modelport, or has
            no schema while the store ``holding_store`` names holds files.
    """
    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            # The plain scheme means psycopg2 to SQLAlchemy; psycopg 3 is the driver we ship.
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed.render_as_string(hide_password=False), parsed.database)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StorageError(
            f"cannot use the database URL {url!r}: {exc}; for PostgreSQL install "
            "'modelport[postgres]' and use postgresql://user:password@host/dbname"
        ) from None
    try:
        _migrate(engine, parsed.render_as_string(hide_password=True), holding_store)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StorageError(
            f"cannot open the registry database {parsed!r}: {database_error_text(exc)}"
        ) from exc
    except StorageError:
        engine.dispose()  # an engine that is not handed out must not keep its connections
        raise
    return engine


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver so that we, not pysqlite, decide how transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that upgrades from
        # read to write can fail at once with SQLITE_BUSY instead of waiting its turn.
        immediate = connection.get_execution_options().get("write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _set_wal(cursor: Any, patience: float = 60.0) -> None:
    """Switch the database to WAL (persistent, so a no-op once any process has).

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once,
    without its busy handler, while another process is creating the schema of a fresh
    registry; so wait for that here.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that intends to write: serialised against other writers.

    SQLite's BEGIN IMMEDIATE does that; on PostgreSQL a transaction-level advisory lock
    does, so that a writer's read-then-write (the next version number, an alias move, a
    metrics merge) never interleaves with another writer's.

    Raises:
        StorageError: the database failed or refused the change (nothing was written).
    """
    with (
        _as_storage_error("the registry database refused the change"),
        engine.connect() as connection,
    ):
        connection.execution_options(write=True)
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITE_LOCK})
            yield connection


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only snapshot: never blocks writers.

    Raises:
        StorageError: the database could not be read.
    """
    with _as_storage_error("cannot read the registry database"), engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            # PostgreSQL's default, READ COMMITTED, takes a new snapshot for every statement.
            connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


@contextmanager
def _as_storage_error(what: str) -> Iterator[None]:
    # Our own errors raised inside a transaction (NotFound, Conflict) pass through as they are.
    try:
        yield
    except SQLAlchemyError as exc:
        raise StorageError(f"{what}: {database_error_text(exc)}") from exc


def _current_revision(connection: Connection) -> str | None:
    # Ask before selecting: on PostgreSQL a failed SELECT would abort the caller's
    # transaction, and with it the advisory lock that serialises writers.
    if not inspect(connection).has_table("alembic_version"):
        return None
    row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


def _migrate(
    engine: Engine, shown_url: str, holding_store: Callable[[], str | None] | None
) -> None:
    with engine.connect() as connection:
        revision = _current_revision(connection)
        connection.rollback()
    if revision == HEAD_REVISION:
        return
    existing_store = holding_store() if revision is None and holding_store else None
    if existing_store is not None:
        raise StorageError(
            f"the registry database {shown_url} is empty (it has no tables), but the artifact "
            f"store {existing_store} holds stored models: the database was lost or truncated "
            "(a full disk, a bad restore?). Restore it from a backup; modelport will not "
            "start a new, empty registry over stored models"
        )
    if revision is not None and revision not in _KNOWN_REVISIONS:
        raise StorageError(
            f"the registry database is at schema revision {revision!r}, which this version of "
            "modelport does not know; upgrade modelport to open it"
        )
    with write_transaction(engine) as connection:
        # Another process may have migrated while we waited for the write lock.
        if _current_revision(connection) == HEAD_REVISION:
            return
        _run_alembic_upgrade(connection)


def _run_alembic_upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
