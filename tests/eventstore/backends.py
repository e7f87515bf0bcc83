"""The backends the contract suite runs against: a backend name -> an async opener.

An opener gets a fresh per-test working directory and returns an open store on the log
that belongs to that directory; opening twice with the same directory reopens the same
log. ``CLEANUPS`` holds, per backend that keeps its log outside the directory, what
removes the log of a directory once the test is done with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from eventstore.base import EventStore, Upcasters
from tests import pg

Opener = Callable[[Path, Upcasters | None], Awaitable[EventStore]]
Cleanup = Callable[[Path], Awaitable[None]]

SQLITE_FILENAME = "events.db"


async def open_sqlite(workdir: Path, upcasters: Upcasters | None) -> EventStore:
    from eventstore.sqlite import SQLiteEventStore

    # No polling: then only the in-process notification can wake wait_for_events, so the
    # contract tests prove it happens (a 1 s poll would hide a missing wake-up).
    return await SQLiteEventStore.open(
        workdir / SQLITE_FILENAME, upcasters=upcasters, poll_interval=None
    )


async def require_postgres() -> None:
    """Skip the test without a PostgreSQL server (fail it under POSTBACK_REQUIRE_POSTGRES=1)."""
    if not await pg.server_available():
        if pg.REQUIRED:
            pytest.fail(f"PostgreSQL is required (POSTBACK_REQUIRE_POSTGRES=1): none at {pg.DSN}")
        pg.skipped = True
        pytest.skip(f"no PostgreSQL at {pg.DSN}")


POSTGRES_SCHEMAS: dict[Path, str] = {}
"""The schema of each working directory's log (created on its first open)."""


async def open_postgres(workdir: Path, upcasters: Upcasters | None) -> EventStore:
    from eventstore.postgres import PostgresEventStore

    await require_postgres()
    schema = POSTGRES_SCHEMAS.get(workdir)
    if schema is None:
        # Directories of earlier examples (the property tests') are gone: so are their logs.
        for gone in [d for d in POSTGRES_SCHEMAS if not d.exists()]:
            await drop_postgres(gone)
        schema = POSTGRES_SCHEMAS[workdir] = pg.new_schema_name()
        await pg.create_schema(schema)
    return await PostgresEventStore.open(pg.dsn_for(schema), upcasters=upcasters)


async def drop_postgres(workdir: Path) -> None:
    """Drop the schema of ``workdir``'s log, if it has one."""
    schema = POSTGRES_SCHEMAS.pop(workdir, None)
    if schema is not None:
        await pg.drop_schema(schema)


BACKENDS: dict[str, Opener] = {
    "sqlite": open_sqlite,
    "postgres": open_postgres,
}
CLEANUPS: dict[str, Cleanup] = {
    "postgres": drop_postgres,
}
