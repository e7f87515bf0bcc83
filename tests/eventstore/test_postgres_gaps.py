"""Catch-up readers never skip an event that commits late (the sequence-gap problem).

With positions from a sequence, a transaction that took position N but commits slowly
lets a later one commit N+1 first; a reader that reads N+1 moves its checkpoint past N
and never delivers it. The PostgreSQL store serializes its batch transactions on the
chain-head row lock and commits holding it, so no later position can even be *taken*
before an earlier one commits.

The tests stall a real batch transaction of one store object half-way, deterministically:
a trigger makes the insert of an event of type ``Slow`` wait for an advisory lock the test
holds. While it waits, it holds the chain-head lock with position N taken; another store
object (another instance) appends concurrently and a catch-up reader runs.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from eventstore.base import RecordedEvent
from eventstore.errors import StoreUnavailableError
from eventstore.postgres import PostgresEventStore
from tests.eventstore.helpers import assert_chain, assert_gap_free, new, read_everything
from tests.eventstore.pg_helpers import (
    blocked_by,
    fill,
    open_store,
    raw_connection,
    wait_until,
)

WAIT = 10.0
BEFORE = 3  # events in the log before the stalled append


def stall_trigger(key: tuple[int, int]) -> str:
    """SQL: inserting an event of type Slow waits (shared) for the advisory lock ``key``."""
    return f"""
    CREATE FUNCTION stall_slow() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({key[0]}, {key[1]});
        RETURN NEW;
    END $$;
    CREATE TRIGGER stall_slow BEFORE INSERT ON events
        FOR EACH ROW WHEN (NEW.type = 'Slow') EXECUTE FUNCTION stall_slow();
    """


async def stalled_pid(conn: Any, key: tuple[int, int]) -> int | None:
    """The backend waiting for the advisory lock ``key``, if one waits."""
    pid = await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2",
        key[0],
        key[1],
    )
    return int(pid) if pid is not None else None


class CatchUpReader:
    """What a projection does: wait for events after its checkpoint, read them, move on.

    Delivers every event exactly once and in order as long as the store never shows a
    later position before an earlier one; if it did, the earlier one would be skipped.
    """

    def __init__(self, store: PostgresEventStore, checkpoint: int) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.delivered: list[RecordedEvent] = []

    async def run_until(self, position: int) -> None:
        while self.checkpoint < position:
            await self.store.wait_for_events(self.checkpoint)
            for event in await self.store.read_all(self.checkpoint, limit=100):
                assert event.position == self.checkpoint + 1, "the reader skipped a position"
                self.delivered.append(event)
                self.checkpoint = event.position


@pytest.fixture
def lock_key() -> tuple[int, int]:
    # Advisory locks are database-wide: a key of this test's own.
    return random.randrange(1, 2**31), random.randrange(1, 2**31)


@pytest.mark.parametrize("outcome", ["commits", "rolls-back"])
async def test_a_reader_never_skips_a_slow_transaction(
    pg_schema: str, lock_key: tuple[int, int], outcome: str
) -> None:
    slow_store = await open_store(pg_schema)
    fast_store = await open_store(pg_schema)  # another instance on the same log
    reader_store = await open_store(pg_schema)  # e.g. the projections' process
    try:
        await fill(slow_store, BEFORE)
        async with raw_connection(pg_schema) as gate, raw_connection(pg_schema) as watch:
            await gate.execute(stall_trigger(lock_key))
            await gate.execute("SELECT pg_advisory_lock($1, $2)", *lock_key)

            reader = CatchUpReader(reader_store, checkpoint=0)
            await reader.run_until(BEFORE)

            async def slow_is_stalled() -> bool:
                return await stalled_pid(watch, lock_key) is not None

            slow_event, fast_event = new("Slow", who="slow"), new("Fast", who="fast")
            slow = asyncio.create_task(slow_store.append("slow", [slow_event]))
            await wait_until(slow_is_stalled, "the slow batch transaction waits in its trigger")
            slow_pid = await stalled_pid(watch, lock_key)
            assert slow_pid is not None

            async def fast_is_blocked() -> bool:
                assert slow_pid is not None
                return await blocked_by(watch, slow_pid) > 0

            # Position BEFORE + 1 is taken (its row inserted, uncommitted) and the
            # chain-head lock held. Another instance appends now:
            fast = asyncio.create_task(fast_store.append("fast", [fast_event]))
            await wait_until(fast_is_blocked, "the other instance waits for the chain-head lock")
            assert not fast.done()
            # A catch-up reader meanwhile sees the committed prefix and nothing else.
            catching_up = asyncio.create_task(reader.run_until(BEFORE + 2))
            assert await reader_store.read_all(BEFORE) == []
            assert await reader_store.last_position() == BEFORE
            assert await reader_store.wait_for_events(BEFORE, timeout=0) == BEFORE
            assert not catching_up.done()
            assert [e.position for e in reader.delivered] == [1, 2, 3]

            if outcome == "commits":
                await gate.execute("SELECT pg_advisory_unlock($1, $2)", *lock_key)
                slow_result = await asyncio.wait_for(slow, WAIT)
                assert slow_result.first_position == BEFORE + 1
                fast_result = await asyncio.wait_for(fast, WAIT)
                assert fast_result.first_position == BEFORE + 2
                await asyncio.wait_for(catching_up, WAIT)
                landed = [e.event_id for e in reader.delivered[BEFORE:]]
                assert landed == [slow_event.event_id, fast_event.event_id]
            else:
                # The slow transaction fails instead: no hole is left behind.
                await gate.execute("SELECT pg_cancel_backend($1)", slow_pid)
                with pytest.raises(StoreUnavailableError):
                    await asyncio.wait_for(slow, WAIT)
                fast_result = await asyncio.wait_for(fast, WAIT)
                assert fast_result.first_position == BEFORE + 1
                await fast_store.append("fast", [new("After")])
                await asyncio.wait_for(catching_up, WAIT)
                assert reader.delivered[BEFORE].event_id == fast_event.event_id
                assert await slow_store.get_event(slow_event.event_id) is None

        everything = await read_everything(reader_store)
        assert reader.delivered == everything  # each exactly once, in order
        assert_gap_free(everything)
        assert_chain(everything)
        assert (await reader_store.verify()).ok
        assert slow_store.writable  # the writer goes on after a failed batch
        assert (await slow_store.append("slow", [new("Later")])).first_position == 6
    finally:
        for store in (slow_store, fast_store, reader_store):
            await store.close()
