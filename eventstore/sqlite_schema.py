"""The SQLite schema, as an ordered list of migrations recorded in the database.

Opening a database applies whatever migrations it lacks, in one transaction, under the
write lock (so two processes opening an old file at once do not race). A database that
records a version newer than this code knows is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from eventstore.chain import GENESIS
from eventstore.errors import SchemaVersionError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


_V1_EVENTS = _statements(
    """
    CREATE TABLE streams (
        stream_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE events (
        position INTEGER PRIMARY KEY,
        stream_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        event_id BLOB NOT NULL UNIQUE,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        data BLOB NOT NULL,
        metadata BLOB NOT NULL,
        recorded_us INTEGER NOT NULL,
        hash BLOB NOT NULL,
        UNIQUE (stream_id, version)
    )
    """,
)


def _v2_chain_head(conn: sqlite3.Connection) -> None:
    # The head lets verify notice events deleted from the end of the log, which a
    # chain alone cannot (a shorter chain is still a valid chain).
    conn.execute(
        """
        CREATE TABLE chain_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            position INTEGER NOT NULL,
            hash BLOB NOT NULL,
            recorded_us INTEGER NOT NULL
        )
        """
    )
    last = conn.execute(
        "SELECT position, hash, recorded_us FROM events ORDER BY position DESC LIMIT 1"
    ).fetchone()
    conn.execute(
        "INSERT INTO chain_head (id, position, hash, recorded_us) VALUES (1, ?, ?, ?)",
        last if last is not None else (0, GENESIS, 0),
    )


# A stream's version is the highest of its events' (the (stream_id, version) index finds
# it in one probe); keeping a copy in streams cost an UPDATE per stream per group commit.
# The table is rebuilt rather than altered: DROP COLUMN needs SQLite 3.35.
_V3_STREAM_VERSIONS_FROM_EVENTS = _statements(
    "CREATE TABLE streams_v3 (stream_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "INSERT INTO streams_v3 (stream_id, name) SELECT stream_id, name FROM streams",
    "DROP TABLE streams",
    "ALTER TABLE streams_v3 RENAME TO streams",
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events and streams", _V1_EVENTS),
    Migration(2, "chain head", _v2_chain_head),
    Migration(3, "stream versions from the events index", _V3_STREAM_VERSIONS_FROM_EVENTS),
)
LATEST_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest migration recorded in the database, 0 for a new one."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Apply the missing migrations up to ``target`` (all by default); return the version.

    ``conn`` must be in autocommit mode (``isolation_level=None``); the migrations run in
    one ``BEGIN IMMEDIATE`` transaction, all or nothing.
    """
    target = LATEST_VERSION if target is None else target
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > LATEST_VERSION:
            raise SchemaVersionError(
                f"the database has schema version {current}; this software knows up to "
                f"{LATEST_VERSION}: upgrade the software before opening it"
            )
        if current == 0:
            conn.execute(
                """
                CREATE TABLE schema_migrations (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TEXT NOT NULL
                )
                """
            )
        for migration in MIGRATIONS:
            if current < migration.version <= target:
                migration.apply(conn)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, datetime.now(UTC).isoformat()),
                )
                current = migration.version
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current
