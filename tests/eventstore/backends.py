"""The backends the contract suite runs against: a backend name -> an async opener.

An opener gets a fresh per-test working directory and returns an open store on the log
that belongs to that directory; opening twice with the same directory reopens the same
log. To run the whole contract suite on another backend, add its opener here, e.g.::

    async def open_postgres(workdir: Path, upcasters: Upcasters | None) -> EventStore:
        dsn = os.environ.get("EVENTSTORE_TEST_DSN") or pytest.skip("no PostgreSQL")
        schema = "t_" + hashlib.sha1(str(workdir).encode()).hexdigest()[:16]
        return await PostgresEventStore.open(dsn, schema=schema, upcasters=upcasters)

    BACKENDS["postgres"] = open_postgres
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from eventstore.base import EventStore, Upcasters

Opener = Callable[[Path, Upcasters | None], Awaitable[EventStore]]

SQLITE_FILENAME = "events.db"


async def open_sqlite(workdir: Path, upcasters: Upcasters | None) -> EventStore:
    from eventstore.sqlite import SQLiteEventStore

    # No polling: then only the in-process notification can wake wait_for_events, so the
    # contract tests prove it happens (a 1 s poll would hide a missing wake-up).
    return await SQLiteEventStore.open(
        workdir / SQLITE_FILENAME, upcasters=upcasters, poll_interval=None
    )


BACKENDS: dict[str, Opener] = {
    "sqlite": open_sqlite,
}
