"""Helpers for the PostgreSQL-specific event store tests (each test has its own schema)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from eventstore.base import EventStore
from eventstore.postgres import PostgresEventStore
from tests.eventstore.helpers import new
from tests.pg import dsn_for

STREAMS = ("orders", "payments", "refunds", "users")


async def open_store(schema: str, **options: Any) -> PostgresEventStore:
    """A store on the log in ``schema`` (the test closes it)."""
    return await PostgresEventStore.open(dsn_for(schema), **options)


@contextlib.asynccontextmanager
async def raw_connection(schema: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection with ``schema`` as its search_path: what an operator (or
    an attacker with write access) has."""
    conn = await asyncpg.connect(dsn_for(schema))
    try:
        yield conn
    finally:
        await conn.close()


async def fill(store: EventStore, count: int) -> None:
    """``count`` events in batches of 1..5, round-robin over :data:`STREAMS`."""
    written = i = 0
    while written < count:
        size = min(1 + i % 5, count - written)
        events = [new("Filled", i=i, k=k) for k in range(size)]
        await store.append(STREAMS[i % len(STREAMS)], events)
        written += size
        i += 1


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Check ``condition`` (a query of the server's state) until it holds.

    For things only the server can tell, such as "that backend now waits for a lock";
    fails the test after ``timeout`` seconds.
    """
    try:
        async with asyncio.timeout(timeout):
            # The server announces no lock waits: ask it again, briefly, until it says so.
            while not await condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


async def blocked_by(conn: Any, pid: int) -> int:
    """How many backends wait for a lock that backend ``pid`` holds."""
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
    )
    return int(count)
