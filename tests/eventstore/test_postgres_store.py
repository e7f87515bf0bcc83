"""PostgreSQL-specific behaviour: options of ``open``, several instances, NOTIFY, failures."""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from eventstore import postgres as postgres_module
from eventstore import postgres_listen, postgres_writer
from eventstore.base import NO_STREAM, AppendResult, NewEvent
from eventstore.errors import (
    ConcurrencyError,
    EventStoreError,
    InvalidEventError,
    StoreUnavailableError,
)
from eventstore.postgres import PostgresEventStore
from tests.eventstore.helpers import assert_chain, assert_gap_free, new, read_everything
from tests.eventstore.pg_helpers import open_store, raw_connection, wait_until
from tests.pg import DSN, dsn_for

WAIT = 10.0

# Records the writer's synchronous_commit setting at each insert into events.
RECORD_SYNCHRONOUS_COMMIT = """
CREATE TABLE seen_settings (value TEXT NOT NULL);
CREATE FUNCTION record_setting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO seen_settings VALUES (current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
CREATE TRIGGER record_setting AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION record_setting();
"""


@pytest.mark.parametrize(
    ("durability", "dsn_setting", "expected"),
    [
        ("full", None, "on"),
        ("full", "off", "on"),  # the store promises durability: it turns it back on
        ("full", "remote_apply", "remote_apply"),  # a stricter setting stays
        ("normal", None, "off"),
    ],
)
async def test_durability_sets_synchronous_commit(
    pg_schema: str, durability: Any, dsn_setting: str | None, expected: str
) -> None:
    async with await open_store(pg_schema) as store:  # creates the tables
        await store.append("s", [new()])
    async with raw_connection(pg_schema) as conn:
        await conn.execute(RECORD_SYNCHRONOUS_COMMIT)
    dsn = dsn_for(pg_schema)
    if dsn_setting is not None:
        dsn += f"&synchronous_commit={dsn_setting}"
    async with await PostgresEventStore.open(dsn, durability=durability) as store:
        await store.append("s", [new(), new()])
        assert (await store.verify()).ok
    async with raw_connection(pg_schema) as conn:
        assert [r[0] for r in await conn.fetch("SELECT value FROM seen_settings")] == [expected]


async def test_unknown_durability_is_refused(pg_schema: str) -> None:
    with pytest.raises(ValueError, match="durability"):
        await open_store(pg_schema, durability="sometimes")


async def test_a_missing_schema_is_a_store_error(pg_schema: str) -> None:
    with pytest.raises(StoreUnavailableError, match="no schema"):
        await PostgresEventStore.open(dsn_for(pg_schema + "_missing"))


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:1/test",  # nothing listens there
        DSN.rsplit("/", 1)[0] + "/no_such_database_here",
    ],
    ids=["no-server", "no-database"],
)
async def test_an_unreachable_database_is_a_store_error(dsn: str, pg_schema: str) -> None:
    # errors.py: callers never catch asyncpg's errors, only the store's own
    with pytest.raises(StoreUnavailableError):
        await PostgresEventStore.open(dsn, connect_timeout=5)


async def test_nul_in_a_stream_or_type_is_invalid(pg_schema: str) -> None:
    async with await open_store(pg_schema) as store:
        with pytest.raises(InvalidEventError):
            await store.append("a\x00b", [new()])
        with pytest.raises(InvalidEventError):
            await store.append("s", [new("T\x00")])
        assert await store.read_stream("a\x00b") == []
        assert await store.stream_version("a\x00b") == 0
        assert await store.last_position() == 0


@pytest.mark.parametrize("max_batch_events", [1, 3, 7])
async def test_small_group_commit_batches(pg_schema: str, max_batch_events: int) -> None:
    # Appends bigger than a batch still go in whole; many small ones split over batches.
    sizes = [1 + (i * 7) % 11 for i in range(40)]  # 1..11 events each
    batch_sizes: list[int] = []
    async with await open_store(
        pg_schema,
        max_batch_events=max_batch_events,
        on_batch=lambda events, _seconds: batch_sizes.append(events),
    ) as store:
        batches = [[new(i=i, k=k) for k in range(size)] for i, size in enumerate(sizes)]
        results = await asyncio.gather(
            *(store.append(f"s{i % 5}", batch) for i, batch in enumerate(batches))
        )
        stored = await read_everything(store)
        assert_gap_free(stored)
        assert len(stored) == sum(sizes) == sum(batch_sizes)
        assert all(size <= max(max_batch_events, 11) for size in batch_sizes)
        for batch, result in zip(batches, results, strict=True):
            landed = stored[result.first_position - 1 : result.last_position]
            assert [e.event_id for e in landed] == [e.event_id for e in batch]
        assert (await store.verify()).ok


async def test_two_instances_share_the_log(pg_schema: str) -> None:
    # Several `postback serve` instances on one database: two store objects, each with its
    # own writer, pool and listener. Each must see the other's commits when it checks
    # versions and chains hashes (no stale version cache).
    async with await open_store(pg_schema) as a, await open_store(pg_schema) as b:
        version = 0
        for i in range(10):  # alternate writers on one stream, exact expected versions
            writer = (a, b)[i % 2]
            result = await writer.append("shared", [new(i=i)], version or NO_STREAM)
            version = result.stream_version
            assert result == AppendResult("shared", i + 1, i + 1, i + 1)

        await a.append("shared", [new()], version)  # b's idea of the stream is now stale
        with pytest.raises(ConcurrencyError) as caught:
            await b.append("shared", [new()], version)
        assert caught.value.actual == version + 1

        results = await asyncio.gather(
            *(store.append(f"own-{i}", [new(), new()]) for i in range(20) for store in (a, b))
        )
        covered = sorted(p for r in results for p in range(r.first_position, r.last_position + 1))
        assert covered == list(range(12, 12 + 80))

        for store in (a, b):
            everything = await read_everything(store)
            assert_gap_free(everything)
            assert_chain(everything)
            assert await store.last_position() == len(everything) == 91
            report = await store.verify()
            assert report.ok
            assert report.checked == 91


async def test_waiters_are_woken_by_another_instances_appends(pg_schema: str) -> None:
    # LISTEN/NOTIFY, no polling: each store's waiter wakes on the other one's commit.
    async with await open_store(pg_schema) as a, await open_store(pg_schema) as b:
        for round_, (waiting, writing) in enumerate([(a, b), (b, a), (a, b)]):
            waiter = asyncio.create_task(waiting.wait_for_events(round_))
            done, _ = await asyncio.wait({waiter}, timeout=0.05)
            assert not done  # (and by now its one look at the head is long done)
            await writing.append("s", [new(round_=round_)])
            assert await asyncio.wait_for(waiter, WAIT) == round_ + 1


async def listener_pids(admin: Any, channel: str) -> set[int]:
    """The backends of the stores' listening connections on ``channel``."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", f"{channel} listener"
    )
    return {row[0] for row in rows}


Listeners = Callable[[], Awaitable[set[int]]]


@contextlib.asynccontextmanager
async def watched(
    pg_schema: str,
) -> AsyncIterator[tuple[PostgresEventStore, PostgresEventStore, Any, Listeners]]:
    """Two stores on ``pg_schema`` (one to wait, one to write), an admin connection, and
    how to read the backends of their two listening connections (checked: two)."""
    async with (
        await open_store(pg_schema) as watcher,
        await open_store(pg_schema) as writer,
        raw_connection(pg_schema) as admin,
    ):

        async def listeners() -> set[int]:
            return await listener_pids(admin, watcher.channel)

        assert len(await listeners()) == 2  # one per store
        yield watcher, writer, admin, listeners


async def test_a_lost_listener_reconnects(pg_schema: str) -> None:
    async with watched(pg_schema) as (watcher, writer, admin, listeners):
        before = await listeners()
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(before)
        )

        async def relistening() -> bool:
            now = await listeners()
            return len(now) == 2 and not now & before

        await wait_until(relistening, "both stores listen again")
        for round_ in range(2):
            waiter = asyncio.create_task(watcher.wait_for_events(round_))
            done, _ = await asyncio.wait({waiter}, timeout=0.05)
            assert not done
            await writer.append("s", [new()])
            assert await asyncio.wait_for(waiter, WAIT) == round_ + 1


async def test_an_unanswered_probe_replaces_the_listening_connection(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listening connection that died without a word (a NAT dropped it) answers no
    probe: the listener takes a new one, and waiters are woken again."""
    monkeypatch.setattr(postgres_listen, "PROBE_INTERVAL", 0.05)
    monkeypatch.setattr(postgres_listen, "PROBE_TIMEOUT", 0.2)
    async with watched(pg_schema) as (watcher, writer, _admin, listeners):
        before = await listeners()
        # As good as silent: the probes' reads of the head wait behind this lock (taken
        # on a connection of its own: pg_stat_activity holds still within a transaction).
        async with raw_connection(pg_schema) as locker:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE chain_head IN ACCESS EXCLUSIVE MODE")

            async def replaced() -> bool:
                return len(await listeners() - before) == 2

            await wait_until(replaced, "both stores open new listening connections")
            await transaction.rollback()

        async def settled() -> bool:
            now = await listeners()
            return len(now) == 2 and not now & before

        await wait_until(settled, "only the new listening connections remain")
        waiter = asyncio.create_task(watcher.wait_for_events(0))
        await writer.append("s", [new()])
        assert await asyncio.wait_for(waiter, WAIT) == 1


async def test_the_probe_delivers_the_head_a_lost_notification_missed(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_listen, "PROBE_INTERVAL", 0.05)
    async with await open_store(pg_schema) as store:
        await store.append("s", [new()])
        waiter = asyncio.create_task(store.wait_for_events(1))
        done, _ = await asyncio.wait({waiter}, timeout=0.05)
        assert not done  # waiting for a notification
        async with raw_connection(pg_schema) as admin:
            # A commit whose NOTIFY never arrived, as far as the listener can tell.
            await admin.execute("UPDATE chain_head SET position = position + 1")
        assert await asyncio.wait_for(waiter, WAIT) == 2


async def test_a_lost_writer_connection_fails_its_batch_and_reconnects(pg_schema: str) -> None:
    async with await open_store(pg_schema) as store:
        await store.append("s", [new()])
        async with raw_connection(pg_schema) as conn:
            # Inserting an event of type "Die" kills the inserting backend mid-transaction.
            await conn.execute(
                """
                CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
                CREATE TRIGGER die BEFORE INSERT ON events
                    FOR EACH ROW WHEN (NEW.type = 'Die') EXECUTE FUNCTION die();
                """
            )
        with pytest.raises(StoreUnavailableError) as caught:
            await store.append("s", [new("Die")], 1)
        assert store.writable
        assert store.write_failure is caught.value  # for health checks, until a commit
        await store.check_writable()  # ... or until a check finds the database writable
        assert store.write_failure is None
        assert await store.append("s", [new("Fine")], 1) == AppendResult("s", 2, 2, 2)
        assert store.write_failure is None
        everything = await read_everything(store)
        assert_gap_free(everything)
        assert (await store.verify()).ok


async def test_a_session_holding_the_chain_head_makes_appends_unavailable_not_hang(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's open transaction that locked ``chain_head``: appends wait at most
    ``WRITER_LOCK_TIMEOUT``, fail as unavailable (a 503 to partners), and succeed again
    once it is gone."""
    monkeypatch.setattr(postgres_writer, "WRITER_LOCK_TIMEOUT", 0.2)
    monkeypatch.setattr(postgres_module, "PROBE_LOCK_TIMEOUT", 0.2)
    async with await open_store(pg_schema) as store:
        await store.append("s", [new()])
        async with raw_connection(pg_schema) as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("SELECT * FROM chain_head FOR UPDATE")
            with pytest.raises(StoreUnavailableError, match="lock timeout"):
                await asyncio.wait_for(store.append("s", [new()], 1), WAIT)
            with pytest.raises(StoreUnavailableError, match="lock timeout"):
                await asyncio.wait_for(store.check_writable(), WAIT)
            await transaction.rollback()
        assert store.writable
        assert store.write_failure is not None
        await store.check_writable()
        assert store.write_failure is None
        assert await store.append("s", [new()], 1) == AppendResult("s", 2, 2, 2)
        assert store.write_failure is None
        assert (await store.verify()).ok


async def test_an_append_the_database_refuses_fails_alone(pg_schema: str) -> None:
    # A trigger refuses events of type "Boom": the batch transaction fails after versions
    # and positions were assigned; the writer retries its appends one by one, so only
    # the refused one fails and the positions stay gap-free.
    async with await open_store(pg_schema) as store:
        await store.append("s", [new(), new()])
        async with raw_connection(pg_schema) as conn:
            await conn.execute(
                """
                CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'boom refused'; END $$;
                CREATE TRIGGER refuse_boom BEFORE INSERT ON events
                    FOR EACH ROW WHEN (NEW.type = 'Boom') EXECUTE FUNCTION refuse_boom();
                """
            )
        calls = [store.append(f"good-{i}", [new()], NO_STREAM) for i in range(10)]
        calls.insert(4, store.append("s", [new("Fine"), new("Boom")], 2))
        calls.insert(7, store.append("fresh", [new("Boom")], NO_STREAM))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for i in (4, 7):
            assert isinstance(outcomes[i], EventStoreError), outcomes[i]
            assert "boom refused" in str(outcomes[i])
        good = [o for i, o in enumerate(outcomes) if i not in (4, 7)]
        assert all(isinstance(o, AppendResult) for o in good), good
        assert await store.last_position() == 12
        assert await store.stream_version("s") == 2
        assert await store.stream_version("fresh") == 0
        assert await store.append("fresh", [NewEvent("Fine", {})], NO_STREAM) == AppendResult(
            "fresh", 13, 13, 1
        )
        everything = await read_everything(store)
        assert_gap_free(everything)
        assert_chain(everything)
        assert (await store.verify()).ok


async def test_writable(pg_schema: str) -> None:
    store = await open_store(pg_schema)
    assert store.writable
    await store.close()
    assert not store.writable


async def test_a_stream_name_too_long_to_index_fails_alone(pg_schema: str) -> None:
    # SQLite takes any length; a PostgreSQL btree entry has a limit (~2.7 kB after
    # compression): that append is invalid, the others of its batch commit.
    too_long = "".join(random.Random(1).choices(string.ascii_letters, k=9000))
    async with await open_store(pg_schema) as store:
        outcomes = await asyncio.gather(
            store.append("before", [new()]),
            store.append(too_long, [new()]),
            store.append("after", [new()]),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], InvalidEventError), outcomes[1]
        assert [o.first_position for o in outcomes if isinstance(o, AppendResult)] == [1, 2]
        assert await store.stream_version(too_long) == 0
        assert (await store.verify()).ok
