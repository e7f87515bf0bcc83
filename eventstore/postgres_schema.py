"""The PostgreSQL schema, as an ordered list of migrations recorded in the database.

The store lives in one PostgreSQL schema: the first existing schema of the connection's
``search_path`` (``current_schema()``), so one database can hold several logs. Opening a
store applies whatever migrations that schema lacks, in one transaction, under a
transaction-level advisory lock keyed by the schema's name (so two processes opening an
old or empty schema at once do not race; the lock is gone with the transaction). A schema
that records a version newer than this code knows is refused rather than misread.

Column types: positions, versions and times (µs since the epoch) are ``BIGINT``; event
ids (16 bytes), data, metadata (canonical JSON) and hashes are ``BYTEA``, so the stored
bytes are exactly the hashed bytes (``jsonb`` would reorder and respace them); stream
names and types are ``TEXT`` (so a database in UTF8 is required: text must come back as
the very bytes that were hashed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventstore.errors import SchemaVersionError, StoreUnavailableError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_V1_EVENTS = (
    """
    CREATE TABLE streams (
        stream_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        version BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE events (
        position BIGINT PRIMARY KEY,
        stream_id BIGINT NOT NULL,
        version BIGINT NOT NULL,
        event_id BYTEA NOT NULL UNIQUE,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        data BYTEA NOT NULL,
        metadata BYTEA NOT NULL,
        recorded_us BIGINT NOT NULL,
        hash BYTEA NOT NULL,
        UNIQUE (stream_id, version)
    )
    """,
)

# The head lets verify notice events deleted from the end of the log, which a chain alone
# cannot (a shorter chain is still a valid chain). Its row is also the lock that
# serializes every append (see eventstore/postgres.py).
_V2_CHAIN_HEAD = (
    """
    CREATE TABLE chain_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        position BIGINT NOT NULL,
        hash BYTEA NOT NULL,
        recorded_us BIGINT NOT NULL
    )
    """,
    """
    INSERT INTO chain_head (id, position, hash, recorded_us)
    SELECT 1, position, hash, recorded_us FROM events ORDER BY position DESC LIMIT 1
    """,
    """
    INSERT INTO chain_head (id, position, hash, recorded_us)
    SELECT 1, 0, decode(repeat('00', 32), 'hex'), 0
    WHERE NOT EXISTS (SELECT FROM chain_head)
    """,
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events and streams", _V1_EVENTS),
    Migration(2, "chain head", _V2_CHAIN_HEAD),
)
LATEST_VERSION = MIGRATIONS[-1].version

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('eventstore ' || current_schema(), 0))"


async def current_schema(conn: Any) -> str:
    """The schema the store lives in; StoreUnavailableError if the search_path has none."""
    encoding = await conn.fetchval("SHOW server_encoding")
    if encoding != "UTF8":
        raise StoreUnavailableError(
            f"the database's encoding is {encoding}; the event store needs UTF8"
        )
    schema = await conn.fetchval("SELECT current_schema()")
    if schema is None:
        path = await conn.fetchval("SHOW search_path")
        raise StoreUnavailableError(
            f"no schema of the search_path ({path}) exists: create it before opening the store"
        )
    return str(schema)


async def schema_version(conn: Any) -> int:
    """The highest migration recorded in the current schema, 0 for a new one."""
    exists = await conn.fetchval(
        "SELECT to_regclass(format('%I.schema_migrations', current_schema())) IS NOT NULL"
    )
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate(conn: Any, target: int | None = None) -> int:
    """Apply the missing migrations up to ``target`` (all by default); return the version.

    ``conn`` is an asyncpg connection outside a transaction; the migrations run in one
    transaction, all or nothing. Driver errors are left to the caller to translate.
    """
    target = LATEST_VERSION if target is None else target
    await current_schema(conn)
    async with conn.transaction():
        # Another process may be migrating (or reading the log to do so) for longer than
        # the writer's lock_timeout: wait for it, however long.
        await conn.execute("SET LOCAL lock_timeout = 0")
        await conn.execute(_LOCK)
        current = await schema_version(conn)
        if current > LATEST_VERSION:
            raise SchemaVersionError(
                f"the schema has version {current}; this software knows up to "
                f"{LATEST_VERSION}: upgrade the software before opening it"
            )
        if current == 0:
            await conn.execute(
                """
                CREATE TABLE schema_migrations (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
                )
                """
            )
        for migration in MIGRATIONS:
            if current < migration.version <= target:
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                current = migration.version
    return current
