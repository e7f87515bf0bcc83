"""A child process for test_sqlite_crash.py: appends forever until it is killed.

Usage: python crash_writer.py DB_PATH TASKS

Opens the store with its default options (durability "full") and runs TASKS concurrent
tasks, each appending single events to its own stream in a loop. After every append that
returned (was acknowledged), prints ``position event_id`` and flushes, so the parent knows
exactly what was promised to be durable when it kills this process.
"""

from __future__ import annotations

import asyncio
import sys

from eventstore.base import NewEvent
from eventstore.sqlite import SQLiteEventStore


async def writer(store: SQLiteEventStore, task: int) -> None:
    stream = f"writer-{task}"
    version = await store.stream_version(stream)
    while True:
        event = NewEvent("Written", {"task": task, "n": version})
        result = await store.append(stream, [event], version)
        version = result.stream_version
        sys.stdout.write(f"{result.first_position} {event.event_id}\n")
        sys.stdout.flush()


async def main(path: str, tasks: int) -> None:
    store = await SQLiteEventStore.open(path)
    await asyncio.gather(*(writer(store, task) for task in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
