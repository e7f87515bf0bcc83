"""SQLite-specific behaviour: options of ``open``, several stores on one file, errors."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from eventstore import sqlite as sqlite_module
from eventstore.base import NO_STREAM, AppendResult, NewEvent
from eventstore.errors import ConcurrencyError, EventStoreError, StoreUnavailableError
from eventstore.sqlite import SQLiteEventStore
from tests.eventstore.helpers import (
    assert_chain,
    assert_gap_free,
    let_others_run,
    new,
    read_everything,
)

WAIT = 10.0


@pytest.mark.parametrize("durability", ["full", "normal"])
async def test_durability_options(tmp_path: Path, durability: Any) -> None:
    path = tmp_path / "d.db"
    async with await SQLiteEventStore.open(path, durability=durability) as store:
        await store.append("s", [new(), new()])
    async with await SQLiteEventStore.open(str(path), durability=durability) as store:
        assert await store.last_position() == 2
        assert (await store.verify()).ok


async def test_unknown_durability_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        await SQLiteEventStore.open(tmp_path / "d.db", durability="sometimes")  # type: ignore[arg-type]
    assert not (tmp_path / "d.db").exists()


async def test_an_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    # errors.py: callers never catch sqlite3.Error, only the store's own errors
    with pytest.raises(StoreUnavailableError):
        await SQLiteEventStore.open(tmp_path / "no such directory" / "events.db")


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database, just some bytes\n" * 100)
    with pytest.raises(StoreUnavailableError):
        await SQLiteEventStore.open(path)


@pytest.mark.parametrize("max_batch_events", [1, 3, 7])
async def test_small_group_commit_batches(tmp_path: Path, max_batch_events: int) -> None:
    # Appends bigger than a batch still go in whole; many small ones split over batches.
    sizes = [1 + (i * 7) % 11 for i in range(40)]  # 1..11 events each
    async with await SQLiteEventStore.open(
        tmp_path / "b.db", poll_interval=None, max_batch_events=max_batch_events
    ) as store:
        batches = [[new(i=i, k=k) for k in range(size)] for i, size in enumerate(sizes)]
        results = await asyncio.gather(
            *(store.append(f"s{i % 5}", batch) for i, batch in enumerate(batches))
        )
        stored = await read_everything(store)
        assert_gap_free(stored)
        assert len(stored) == sum(sizes)
        for batch, result in zip(batches, results, strict=True):
            landed = stored[result.first_position - 1 : result.last_position]
            assert [e.event_id for e in landed] == [e.event_id for e in batch]
        assert (await store.verify()).ok


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (sqlite3.OperationalError("disk I/O error"), StoreUnavailableError),
        (RuntimeError("a bug"), StoreUnavailableError),
        (EventStoreError("its own"), EventStoreError),
    ],
)
async def test_a_failed_batch_fails_its_appends_and_the_writer_goes_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    expected: type[EventStoreError],
) -> None:
    # The writer's thread commits batch after batch: a batch whose transaction fails
    # gives its callers the store's error (never sqlite3's) and the next batch commits.
    real = sqlite_module.commit_batch
    failures = [failure]

    def failing_once(conn: sqlite3.Connection, batch: Any, cache: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(conn, batch, cache)

    monkeypatch.setattr(sqlite_module, "commit_batch", failing_once)
    async with await SQLiteEventStore.open(tmp_path / "f.db", poll_interval=None) as store:
        with pytest.raises(expected) as caught:
            await asyncio.wait_for(store.append("s", [new()]), WAIT)
        assert type(caught.value) is expected
        assert store.writable
        assert store.write_failure is caught.value  # for health checks, until a commit
        result = await store.append("s", [new()], NO_STREAM)  # nothing of the first landed
        assert result == AppendResult("s", 1, 1, 1)
        assert store.write_failure is None
        assert (await store.verify()).ok


async def test_check_writable_finds_a_database_that_takes_no_writes(tmp_path: Path) -> None:
    # query_only makes the writer's connection read-only, as a read-only file would.
    async with await SQLiteEventStore.open(tmp_path / "r.db", poll_interval=None) as store:
        await store.check_writable()
        assert store.write_failure is None
        await sqlite_module.run_in_thread(store._writer, _query_only(True))
        with pytest.raises(StoreUnavailableError, match="readonly"):
            await store.append("s", [new()])
        with pytest.raises(StoreUnavailableError, match="readonly") as caught:
            await store.check_writable()
        assert store.write_failure is caught.value
        await sqlite_module.run_in_thread(store._writer, _query_only(False))
        await store.check_writable()  # no append needed to find it writable again
        assert store.write_failure is None
        assert await store.last_position() == 0  # the checks wrote nothing


def _query_only(on: bool) -> Any:
    def set_it(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {int(on)}")

    return set_it


async def test_only_the_failed_batch_of_a_drain_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One event per batch: the writer commits the queued appends as three batches, and
    # the first one's failure is that batch's alone.
    real = sqlite_module.commit_batch
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_once(conn: sqlite3.Connection, batch: Any, cache: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(conn, batch, cache)

    monkeypatch.setattr(sqlite_module, "commit_batch", failing_once)
    async with await SQLiteEventStore.open(
        tmp_path / "f.db", poll_interval=None, max_batch_events=1
    ) as store:
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(store.append(f"s{i}", [new()]) for i in range(3)), return_exceptions=True
            ),
            WAIT,
        )
        assert isinstance(outcomes[0], StoreUnavailableError)
        assert isinstance(outcomes[0].__cause__, sqlite3.OperationalError)
        assert outcomes[1:] == [AppendResult("s1", 1, 1, 1), AppendResult("s2", 2, 2, 1)]


async def test_a_failing_batch_observer_does_not_hold_the_appends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def observer(events: int, seconds: float) -> None:
        raise RuntimeError("the metrics broke")

    async with await SQLiteEventStore.open(
        tmp_path / "o.db", poll_interval=None, on_batch=observer
    ) as store:
        result = await asyncio.wait_for(store.append("s", [new()]), WAIT)
        assert result == AppendResult("s", 1, 1, 1)
        assert await store.last_position() == 1
    assert "group-commit observer failed" in caplog.text


async def test_two_stores_on_one_file_share_the_log(tmp_path: Path) -> None:
    # Several processes may open one file; two store objects in one process are the same
    # case. Each must see the other's commits when it checks versions and chains hashes.
    path = tmp_path / "shared.db"
    async with (
        await SQLiteEventStore.open(path, poll_interval=None) as a,
        await SQLiteEventStore.open(path, poll_interval=None) as b,
    ):
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


async def test_a_waiter_notices_another_stores_appends_by_polling(tmp_path: Path) -> None:
    path = tmp_path / "polled.db"
    async with (
        await SQLiteEventStore.open(path, poll_interval=0.02) as watcher,
        await SQLiteEventStore.open(path, poll_interval=None) as writer,
    ):
        waiter = asyncio.create_task(watcher.wait_for_events(0))
        await let_others_run()
        assert not waiter.done()
        await writer.append("s", [NewEvent("FromElsewhere", {})])
        assert await asyncio.wait_for(waiter, WAIT) == 1
        assert await watcher.last_position() == 1


async def test_a_failed_batch_transaction_leaves_no_trace(tmp_path: Path) -> None:
    # A trigger makes SQLite refuse any event of type "Boom", so the batch transaction
    # fails after the writer has begun assigning versions and stream ids; all of that
    # must be rolled back, including whatever the writer remembers between batches.
    path = tmp_path / "trigger.db"
    async with await SQLiteEventStore.open(path, poll_interval=None) as store:
        await store.append("s", [new(), new()])
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON events WHEN NEW.type = 'Boom'"
            " BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        )

    async with await SQLiteEventStore.open(path, poll_interval=None) as store:
        with pytest.raises(EventStoreError):
            await store.append("s", [new("Fine"), new("Boom")], 2)
        with pytest.raises(EventStoreError):
            await store.append("fresh", [new("Fine"), new("Boom")], NO_STREAM)
        assert await store.last_position() == 2

        assert await store.append("s", [new("Fine")], 2) == AppendResult("s", 3, 3, 3)
        assert await store.append("fresh", [new("Fine")], NO_STREAM) == AppendResult(
            "fresh", 4, 4, 1
        )
        assert [e.version for e in await store.read_stream("fresh")] == [1]
        everything = await read_everything(store)
        assert_gap_free(everything)
        assert_chain(everything)
        assert (await store.verify()).ok


# -- small reads inline on the loop's thread, the rest in the reader's worker thread -------


async def _reads_in_thread(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each read that went to a worker thread (by the store's module function)."""
    import eventstore.sqlite as module

    hops: list[str] = []
    real = module.run_in_thread

    async def counting(conn: Any, fn: Any) -> Any:
        hops.append(getattr(fn, "keywords", {}).get("sql", "other")[:40])
        return await real(conn, fn)

    monkeypatch.setattr(module, "run_in_thread", counting)
    return hops


async def test_small_reads_are_inline_and_big_ones_go_to_the_reader_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await SQLiteEventStore.open(tmp_path / "r.db", poll_interval=None) as store:
        await store.append("small", [new(i=i) for i in range(5)])
        big = await store.append("big", [new(i=i) for i in range(200)])
        hops = await _reads_in_thread(monkeypatch)

        small = await store.read_stream("small")
        assert [e.data["i"] for e in small] == list(range(5))
        assert (await store.get_event(small[2].event_id)) == small[2]
        assert await store.stream_version("small") == 5
        assert await store.last_position() == big.last_position
        assert [e.data["i"] for e in await store.read_stream("big", 150, 20)] == list(
            range(149, 169)
        )
        assert hops == []  # none of these left the loop's thread

        everything = await store.read_stream("big")  # more rows than an inline read takes
        assert [e.data["i"] for e in everything] == list(range(200))
        assert len(hops) == 1
        assert await store.read_all(0, 10) == (await read_everything(store))[:10]
        assert len(hops) >= 2  # the log in bulk always goes to the thread


class _BusyConnection:
    """Stands in for the inline connection while another process holds a lock."""

    def execute(self, *_: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    def close(self) -> None:
        pass


async def test_a_read_that_would_wait_goes_to_the_reader_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await SQLiteEventStore.open(tmp_path / "b.db", poll_interval=None) as store:
        first = await store.append("s", [new(i=1), new(i=2)])
        inline, store._inline = store._inline, _BusyConnection()  # type: ignore[assignment]
        try:
            hops = await _reads_in_thread(monkeypatch)
            assert [e.data["i"] for e in await store.read_stream("s")] == [1, 2]
            assert await store.stream_version("s") == 2
            assert await store.last_position() == first.last_position
            assert len(hops) == 3
        finally:
            store._inline = inline


def test_a_pragma_answered_busy_at_once_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What two connections switching one new file to WAL at once can get: BUSY with no
    # wait (the busy handler is skipped to break their deadlock). Here another connection
    # holds the file's lock until the first pause.
    path = str(tmp_path / "new.db")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    raw = sqlite3.connect(path, isolation_level=None, timeout=0)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if blocker.in_transaction:
            blocker.execute("COMMIT")

    monkeypatch.setattr(sqlite_module.time, "sleep", pause)
    sqlite_module._execute_pragma(raw, "PRAGMA journal_mode = WAL")
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert len(pauses) == 1

    # Held for good: BUSY after the last try; another error at once.
    blocker.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(sqlite_module.time, "sleep", pauses.append)
    pauses.clear()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite_module._execute_pragma(raw, "PRAGMA journal_mode = DELETE")
    assert len(pauses) == sqlite_module._PRAGMA_BUSY_RETRIES
    with pytest.raises(sqlite3.OperationalError, match="syntax"):
        sqlite_module._execute_pragma(raw, "PRAGMA (")
    blocker.execute("COMMIT")
    for conn in (blocker, raw):
        conn.close()
