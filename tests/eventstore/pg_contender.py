"""A child process for test_postgres_concurrency.py: one more instance racing for versions.

Usage: python -m tests.eventstore.pg_contender DSN NAME TARGET

Opens a store on the DSN, prints ``ready`` and waits for a line on stdin; then runs
:func:`contend` (the same loop the parent's store objects run) and prints one line per
append it won, ``version event_id``, then ``done``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from eventstore.base import EventStore, NewEvent
from eventstore.errors import ConcurrencyError
from eventstore.postgres import PostgresEventStore

CONTESTED = "contested"


async def contend(store: EventStore, name: str, target: int) -> list[tuple[int, uuid.UUID]]:
    """Append to CONTESTED at the version just read until it reaches ``target``.

    Every try also appends to a stream of its own (so positions interleave). Returns the
    (version, event id) of each append won.
    """
    won: list[tuple[int, uuid.UUID]] = []
    tries = 0
    while (version := await store.stream_version(CONTESTED)) < target:
        tries += 1
        event = NewEvent("Contended", {"by": name, "try": tries})
        try:
            result = await store.append(CONTESTED, [event], version)
        except ConcurrencyError:
            pass
        else:
            won.append((result.stream_version, event.event_id))
        await store.append(f"own-{name}", [NewEvent("Tried", {"try": tries})])
    return won


async def main(dsn: str, name: str, target: int) -> None:
    async with await PostgresEventStore.open(dsn, pool_size=1) as store:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for version, event_id in await contend(store, name, target):
            print(version, event_id, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
