"""The projection databases' plumbing: SQL rewriting for PostgreSQL, IN lists, the bridge,
error translation, and the portable SQL rule checked on every projection's statements."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3

import asyncpg
import pytest

from eventstore.errors import EventStoreError, StoreUnavailableError
from eventstore.sqlite import SQLiteEventStore
from projections import goal_stats, postback_log, profiles, stats_query, subscribers
from projections.catalog import all_projections
from projections.checkpoints import CHECKPOINTS_SQL
from projections.database import CHUNK_SIZES, SqlConnection, dialect_of, in_chunks
from projections.pg_bridge import PgBridge, to_postgres, translate_error
from projections.pg_database import (
    PostgresProjectionDatabase,
    advisory_key,
    leader_key,
    redact,
    writers_key,
)
from projections.runner import ProjectionRunner
from tests import pg
from tests.projections.backends import Scope
from tests.projections.helpers import Recording


def test_placeholders_are_numbered_outside_quotes_and_comments() -> None:
    assert to_postgres("SELECT ? , ?") == "SELECT $1 , $2"
    assert to_postgres("SELECT '?', \"a?\", ? -- what?\n, ?") == (
        "SELECT '?', \"a?\", $1 -- what?\n, $2"
    )
    assert to_postgres("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1"


def test_create_table_is_rewritten_and_nothing_else() -> None:
    ddl = "CREATE TABLE IF NOT EXISTS t (k BIGINT PRIMARY KEY, b BLOB) WITHOUT ROWID"
    assert to_postgres(ddl) == "CREATE TABLE IF NOT EXISTS t (k BIGINT PRIMARY KEY, b BYTEA) "
    assert to_postgres("SELECT blob FROM t") == "SELECT blob FROM t"


def test_in_chunks_pads_to_few_sizes() -> None:
    assert list(in_chunks([])) == []
    assert list(in_chunks({3, 1, 2})) == [("?, ?, ?, ?", [1, 2, 3, 3])]
    chunks = list(in_chunks(range(1000)))
    assert [len(values) for _, values in chunks] == [512, 512]
    assert sorted({v for _, values in chunks for v in values}) == list(range(1000))
    assert all(len(values) in CHUNK_SIZES for _, values in chunks)


def test_advisory_keys_are_stable_and_distinct() -> None:
    assert advisory_key("a", "b") == advisory_key("a", "b") != advisory_key("ab")
    assert -(2**63) <= advisory_key("x") < 2**63
    assert leader_key("s", ["b", "a"]) == leader_key("s", ["a", "b"]) != leader_key("t", ["a"])
    assert writers_key("s") != writers_key("t")


def test_redact() -> None:
    assert redact("postgresql://u:secret@h:5/db?x=1") == "postgresql://u:***@h:5/db?x=1"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_error_translation() -> None:
    assert isinstance(translate_error(ConnectionResetError()), StoreUnavailableError)
    assert isinstance(
        translate_error(asyncpg.exceptions.AdminShutdownError("bye")), StoreUnavailableError
    )
    assert isinstance(
        translate_error(asyncpg.exceptions.UniqueViolationError("dup")), EventStoreError
    )
    boom = ValueError("mine")
    assert translate_error(boom) is boom


async def test_the_bridge_refuses_the_event_loop(pg_schema: str) -> None:
    conn = await asyncpg.connect(pg.dsn_for(pg_schema))
    try:
        bridge = PgBridge(conn, asyncio.get_running_loop())
        with pytest.raises(RuntimeError, match="worker threads"):
            bridge.execute("SELECT 1")
        assert await asyncio.to_thread(
            lambda: bridge.execute("SELECT CAST(? AS BIGINT)", (7,)).fetchall()
        ) == [(7,)]
    finally:
        await conn.close()


async def test_an_unreachable_database_is_unavailable_and_run_keeps_trying(
    store: SQLiteEventStore,
) -> None:
    """No server at all (nothing listens on port 1): open() raises the transient error, and
    run() logs and retries with backoff until stopped, instead of failing."""
    database = PostgresProjectionDatabase("postgresql://u@127.0.0.1:1/db", connect_timeout=5)
    runner = ProjectionRunner(store, [Recording()], database=database)
    with pytest.raises(StoreUnavailableError):
        await runner.open()
    retried = asyncio.Event()
    retries = 0

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            nonlocal retries
            retries += "retrying" in record.getMessage()
            if retries == 2:
                retried.set()

    handler = Count()
    logging.getLogger("projections.runner").addHandler(handler)
    try:
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(10):
            await retried.wait()
        runner.stop()
        await task  # returns: it never failed
    finally:
        logging.getLogger("projections.runner").removeHandler(handler)
        await runner.close()


def test_dialects(projection_db: Scope) -> None:
    conn: SqlConnection = projection_db.connect()
    assert dialect_of(conn) == projection_db.name
    if projection_db.name == "sqlite":
        assert isinstance(conn, sqlite3.Connection)  # no wrapper on SQLite


_SQLITE_ONLY = re.compile(
    r"\b(?:INSERT\s+OR\s+(?:REPLACE|IGNORE)|json_each|PRAGMA|(?<!WITHOUT\s)rowid)\b", re.IGNORECASE
)
_INTEGER = re.compile(r"\bINTEGER\b", re.IGNORECASE)


def statements_of(*modules: object) -> list[str]:
    return [
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, str) and re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE)", value)
    ]


def test_the_projections_sql_follows_the_portable_rule() -> None:
    """A cheap guard (the PostgreSQL runs are the real test): no SQLite-only statement in
    any projection's SQL, and no 32-bit integer column in these modules' tables."""
    ours = [CHECKPOINTS_SQL]
    for module in (goal_stats, postback_log, profiles, subscribers):
        ours.extend(module.SCHEMA_SQL)
    ours.extend(statements_of(goal_stats, postback_log, profiles, stats_query, subscribers))
    everyone = [*ours, *(sql for p in all_projections() for sql in p.schema_sql)]
    assert [text for text in everyone if _SQLITE_ONLY.search(text)] == []
    assert [text for text in ours if _INTEGER.search(text)] == []
