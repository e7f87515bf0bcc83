"""The embedded SQLite backend: one writer with group commit, aiosqlite throughout.

* One writer connection. Appends from any number of tasks are queued; the writer takes
  everything queued and commits it as one transaction (one WAL sync), then releases each
  caller with its own outcome. While a batch commits, the next one gathers.
* The writer runs in aiosqlite's worker thread and commits batch after batch until the
  queue is empty: the event loop is never blocked, a batch costs no thread hop of its
  own, and the next batch does not wait for a busy loop to come round to it (under HTTP
  load that wait had been 3.5 to 5 ms of each 9.5 ms batch cycle).
* Durable by default: WAL with ``synchronous=FULL``: an acknowledged append survives a
  crash of the process or of the machine. ``durability="normal"`` (explicit only) survives
  process crashes but may lose the last commits on power loss.
* Reads use separate connections (WAL lets them run beside the writer). Small reads (a
  stream of a few events, one event, the head) run inline on the event loop's thread:
  in WAL mode a reader takes no lock, so such a read costs tens of microseconds, less
  than the hop to a worker thread and back; anything bigger, or a read that would have
  to wait (``SQLITE_BUSY``), goes to the reader's worker thread.
* Several processes may open the same file: ``BEGIN IMMEDIATE`` serializes their batches
  and every batch reads the head and stream versions inside its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from functools import partial
from typing import Any, Final, Literal, TypeVar, cast

import aiosqlite

from eventstore.appending import (
    AppendRequest,
    Outcome,
    check_expected_version,
    encode_events,
    settle,
    utf8,
)
from eventstore.base import (
    ANY,
    AppendResult,
    EventStore,
    ExpectedVersion,
    NewEvent,
    RawEvent,
    RecordedEvent,
    Upcasters,
    VerifyReport,
    positions_to_read,
)
from eventstore.chain import ChainVerifier
from eventstore.errors import (
    EventStoreError,
    InvalidEventError,
    StoreClosedError,
    StoreUnavailableError,
)
from eventstore.reading import EVENT_COLUMNS, SELECT_EVENTS, decode_rows, lean_reader
from eventstore.sqlite_batch import STREAM_VERSION, WriterCache, commit_batch
from eventstore.sqlite_schema import migrate

T = TypeVar("T")
log = logging.getLogger(__name__)
Durability = Literal["full", "normal"]
BatchObserver = Callable[[int, float], None]

_VERIFY_BATCH = 10_000
_READ_AT_CHUNK = 500
_INLINE_ROWS: Final = 64
"""At most this many rows are read inline on the event loop's thread; a read that finds
more is run again in the reader's worker thread."""
"""Positions per ``IN (...)`` statement of ``read_at`` (SQLite before 3.32 allows 999
bound values per statement)."""
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
"""The writer checkpoints the WAL into the database file once it holds this many pages
(SQLite's default is 1,000). A group commit dirties an index leaf per stream it touches,
and a checkpoint writes each page once however often it changed: checkpointing ten times
less often writes far fewer pages, and took single-event appends from 46,000 to 51,500/s
at 512 tasks and from 34,000 to 37,000/s at 64 here (``bench/append.py``). The WAL file
grows to about 40 MB between checkpoints (and is reused, not regrown)."""


def _store_error(exc: BaseException) -> EventStoreError:
    """What the callers of a failed batch get: the store's own error, caused by ``exc``."""
    if isinstance(exc, EventStoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        error = translate_error(exc)
    else:
        error = StoreUnavailableError(f"the writer failed: {exc!r}")
    error.__cause__ = exc
    return error


def translate_error(exc: sqlite3.Error) -> EventStoreError:
    """The one place where sqlite3's errors become the store's own."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        return StoreUnavailableError(f"SQLite: {exc}")
    return EventStoreError(f"SQLite: {exc}")


async def run_in_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(raw_connection)`` in the connection's worker thread, as one call.

    aiosqlite's public API hops threads once per statement (~85 µs here); a batch
    transaction has several statements, so it runs as one function on the thread
    through ``Connection._execute`` (private; aiosqlite is pinned in pyproject.toml).
    """
    try:
        return cast(T, await conn._execute(lambda: fn(conn._conn)))  # type: ignore[no-untyped-call]
    except sqlite3.Error as exc:
        raise translate_error(exc) from exc


async def open_connection(path: str, pragmas: Sequence[str] = ()) -> aiosqlite.Connection:
    """An aiosqlite connection in autocommit mode with ``pragmas`` applied; errors translated.

    Public for code that keeps its own SQLite files beside the log (the projections).
    """
    conn = aiosqlite.connect(path, isolation_level=None)
    try:
        await conn
    except sqlite3.Error as exc:
        # aiosqlite stops its worker thread here without waiting for it; wait, so the
        # thread does not report to an event loop that may be closed by then.
        await asyncio.to_thread(conn._thread.join, 10)
        raise translate_error(exc) from exc

    def configure(raw: sqlite3.Connection) -> None:
        for pragma in pragmas:
            _execute_pragma(raw, pragma)

    try:
        await run_in_thread(conn, configure)
    except BaseException:
        await conn.close()
        raise
    return conn


_PRAGMA_BUSY_RETRIES: Final = 100
_PRAGMA_BUSY_PAUSE: Final = 0.02


def _execute_pragma(raw: sqlite3.Connection, pragma: str) -> None:
    # Two connections switching a new file to WAL at the same moment both hold its shared
    # lock and want the exclusive one: SQLite breaks that deadlock by answering BUSY at
    # once to one of them, without the busy handler. Try again (about 2 s at most).
    for attempt in range(_PRAGMA_BUSY_RETRIES + 1):
        try:
            raw.execute(pragma)
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or attempt == _PRAGMA_BUSY_RETRIES:
                raise
            time.sleep(_PRAGMA_BUSY_PAUSE)


class SQLiteEventStore(EventStore):
    """The event store on one SQLite file. Create it with :meth:`open`."""

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        inline: sqlite3.Connection,
        path: str,
        *,
        last_position: int,
        upcasters: Upcasters | None,
        poll_interval: float | None,
        max_batch_events: int,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._on_batch = on_batch
        self._writer = writer
        self._reader = reader
        self._inline = inline
        self._path = path
        self._upcasters = upcasters if upcasters else None
        self._poll_interval = poll_interval
        self._max_batch_events = max_batch_events
        # Appends waiting for the writer, each with its caller's future. The loop's thread
        # appends, the writer's thread pops from the left: both atomic on a deque.
        self._queue: deque[tuple[AppendRequest, asyncio.Future[AppendResult]]] = deque()
        self._loop = asyncio.get_running_loop()
        self._writer_cache = WriterCache()
        self._write_failure: EventStoreError | None = None
        self._wakeup = asyncio.Event()
        self._new_events = asyncio.Event()
        self._last_committed = last_position
        self._closed = False
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop())

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        upcasters: Upcasters | None = None,
        poll_interval: float | None = 1.0,
        max_batch_events: int = 5000,
        on_batch: BatchObserver | None = None,
    ) -> SQLiteEventStore:
        """Open (creating or upgrading) the log in the SQLite file at ``path``.

        ``poll_interval``: appends made by *other processes* on the same file are noticed
        by :meth:`wait_for_events` within this many seconds (None: only this process's).
        ``on_batch(events, seconds)`` is called after each group commit (for metrics).
        """
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        path = os.fspath(path)
        writer = reader = None
        inline: sqlite3.Connection | None = None
        try:
            writer = await open_connection(
                path,
                [
                    "PRAGMA busy_timeout = 10000",
                    "PRAGMA journal_mode = WAL",
                    f"PRAGMA synchronous = {durability.upper()}",
                    "PRAGMA cache_size = -65536",
                    f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}",
                ],
            )
            await run_in_thread(writer, migrate)
            reader = await open_connection(
                path, ["PRAGMA busy_timeout = 10000", "PRAGMA query_only = 1"]
            )
            row = await run_in_thread(
                reader, lambda raw: raw.execute("SELECT position FROM chain_head").fetchone()
            )
            inline = _open_inline(path)
        except BaseException:
            for conn in (writer, reader):
                if conn is not None:
                    await conn.close()
            raise
        return cls(
            writer,
            reader,
            inline,
            path,
            last_position=int(row[0]) if row else 0,
            upcasters=upcasters,
            poll_interval=poll_interval,
            max_batch_events=max_batch_events,
            on_batch=on_batch,
        )

    @property
    def path(self) -> str:
        return self._path

    @property
    def writable(self) -> bool:
        """Whether appends can be taken: open, and the writer task is running."""
        return not self._closed and not self._writer_task.done()

    @property
    def write_failure(self) -> EventStoreError | None:
        return self._write_failure

    async def check_writable(self) -> None:
        self._check_open()
        try:
            await run_in_thread(self._writer, _probe_write)  # after any batch in hand
        except EventStoreError as exc:
            self._write_failure = exc
            raise
        self._write_failure = None

    # -- appending ---------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        if self._closed:
            raise StoreClosedError("the event store is closed")
        if type(stream) is not str or not stream:
            raise InvalidEventError("a stream name must be a non-empty string")
        expected = check_expected_version(expected_version)
        request = AppendRequest(
            stream, utf8(stream, "stream name"), encode_events(events), expected
        )
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        self._queue.append((request, future))
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The writer's thread commits batch after batch until the queue is empty,
            # releasing each batch's callers as it commits: the next batch does not wait
            # for this thread's loop to come round to it.
            await run_in_thread(self._writer, self._drain)

    def _drain(self, conn: sqlite3.Connection) -> None:
        """In the writer's thread: group-commit what is queued until nothing is."""
        queue = self._queue
        while queue:
            batch: list[AppendRequest] = []
            waiters: list[asyncio.Future[AppendResult]] = []
            events = 0
            while queue:
                request, waiter = queue[0]  # stays first: this thread is the only taker
                if events and events + len(request.events) > self._max_batch_events:
                    break
                queue.popleft()
                batch.append(request)
                waiters.append(waiter)
                events += len(request.events)
            started = time.perf_counter()
            try:
                outcomes: list[Outcome] | EventStoreError = commit_batch(
                    conn, batch, self._writer_cache
                )
            except BaseException as exc:
                outcomes = _store_error(exc)
                if not isinstance(exc, Exception):  # KeyboardInterrupt and the like
                    self._post(waiters, outcomes, events, 0.0)
                    raise
            if not self._post(waiters, outcomes, events, time.perf_counter() - started):
                return

    def _post(
        self,
        waiters: list[asyncio.Future[AppendResult]],
        outcomes: list[Outcome] | EventStoreError,
        events: int,
        seconds: float,
    ) -> bool:
        """From the writer's thread: hand a batch's outcomes to the loop; False if it is closed."""
        try:
            self._loop.call_soon_threadsafe(self._committed, waiters, outcomes, events, seconds)
        except RuntimeError:  # the loop is closed: nobody is left to wait
            return False
        return True

    def _committed(
        self,
        waiters: list[asyncio.Future[AppendResult]],
        outcomes: list[Outcome] | EventStoreError,
        events: int,
        seconds: float,
    ) -> None:
        """On the loop's thread: a batch's callers get their outcomes (or its error)."""
        if isinstance(outcomes, EventStoreError):
            self._write_failure = outcomes
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(outcomes)
            return
        self._write_failure = None
        last = settle(waiters, outcomes)
        if last > self._last_committed:
            self._last_committed = last
            self._new_events.set()
            self._new_events = asyncio.Event()
        if self._on_batch is not None:
            try:
                self._on_batch(events, seconds)
            except Exception:  # an observer's failure must not touch the appends
                log.exception("the group-commit observer failed")

    # -- reading -----------------------------------------------------------------

    async def _fetch(
        self, sql: str, params: Sequence[object], *, small: bool = False
    ) -> list[RecordedEvent]:
        """The events ``sql`` selects; inline first when the caller expects few (``small``)."""
        return decode_rows(await self._rows(sql, params, small=small), self._upcasters)

    async def _rows(self, sql: str, params: Sequence[object], *, small: bool) -> list[Any]:
        self._check_open()
        rows = self._read_inline(sql, params) if small else None
        if rows is None:
            rows = await run_in_thread(self._reader, partial(_fetch_all, sql=sql, params=params))
        return rows

    def _read_inline(self, sql: str, params: Sequence[object]) -> list[Any] | None:
        """The rows of ``sql`` read on this thread, or None: more than ``_INLINE_ROWS`` of
        them, or the read would have to wait for a lock (the caller then uses the thread)."""
        try:
            cursor = self._inline.execute(sql, params)
            try:
                rows = cursor.fetchmany(_INLINE_ROWS + 1)
            finally:
                cursor.close()  # ends the statement, and with it the read snapshot
        except sqlite3.OperationalError:
            return None  # SQLITE_BUSY (busy_timeout 0): never wait for a lock on the loop
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        return rows if len(rows) <= _INLINE_ROWS else None

    async def _fetch_one(self, sql: str, params: Sequence[object]) -> Any:
        """The first row of a one-row query (inline unless it would wait)."""
        rows = await self._rows(sql, params, small=True)
        return rows[0] if rows else None

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        return await self._fetch(
            f"{SELECT_EVENTS} WHERE s.name = ? AND e.version >= ? ORDER BY e.version LIMIT ?",
            (stream, from_version, -1 if limit is None else limit),
            small=True,
        )

    async def stream_version(self, stream: str) -> int:
        row = await self._fetch_one(
            f"SELECT {STREAM_VERSION} FROM streams s WHERE name = ?", (stream,)
        )
        return int(row[0]) if row else 0

    async def read_all(
        self, after: int = 0, limit: int = 1000, *, leave_out: Collection[str] = ()
    ) -> list[RecordedEvent]:
        reader = lean_reader(leave_out)
        sql = f"{reader.select} WHERE e.position > ? ORDER BY e.position LIMIT ?"
        return reader.decode(await self._rows(sql, (after, limit), small=False), self._upcasters)

    async def get_event(self, event_id: uuid.UUID) -> RecordedEvent | None:
        found = await self._fetch(
            f"{SELECT_EVENTS} WHERE e.event_id = ?", (event_id.bytes,), small=True
        )
        return found[0] if found else None

    async def read_at(self, positions: Collection[int]) -> list[RecordedEvent]:
        self._check_open()
        wanted = positions_to_read(positions)
        found: list[RecordedEvent] = []
        # Ascending chunks of ascending positions: their results concatenate in order.
        for start in range(0, len(wanted), _READ_AT_CHUNK):
            chunk = wanted[start : start + _READ_AT_CHUNK]
            marks = ",".join("?" * len(chunk))
            found += await self._fetch(
                f"{SELECT_EVENTS} WHERE e.position IN ({marks}) ORDER BY e.position", chunk
            )
        return found

    async def last_position(self) -> int:
        row = await self._fetch_one("SELECT position FROM chain_head", ())
        position = int(row[0]) if row else 0
        if position > self._last_committed:
            # Appends by another process on the file: wake wait_for_events now (a process
            # told of them, e.g. by a pipe, need not wait for its next poll).
            self._last_committed = position
            self._new_events.set()
            self._new_events = asyncio.Event()
        return self._last_committed

    async def wait_for_events(self, after: int, timeout: float | None = None) -> int:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self._poll_interval is not None:
            await self.last_position()
        while self._last_committed <= after:
            waits = [self._poll_interval]
            if deadline is not None:
                waits.append(deadline - loop.time())
            wait = min((w for w in waits if w is not None), default=None)
            if wait is not None and wait <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_events.wait(), wait)
            self._check_open()
            if self._poll_interval is not None and self._last_committed <= after:
                await self.last_position()  # appends by other processes on the file
        return self._last_committed

    async def iter_raw(
        self, after: int = 0, batch_size: int = 1000
    ) -> AsyncIterator[list[RawEvent]]:
        """Batches of the log after ``after`` exactly as stored (for copying it elsewhere).

        The bytes of data and metadata are the stored (hashed) ones, so a backend that
        imports the rows (``PostgresEventStore.import_raw``) keeps every hash valid.
        """
        sql = f"{SELECT_EVENTS} WHERE e.position > ? ORDER BY e.position LIMIT ?"
        while True:
            self._check_open()
            rows = await run_in_thread(
                self._reader, partial(_fetch_all, sql=sql, params=(after, batch_size))
            )
            if not rows:
                return
            yield [RawEvent(*row) for row in rows]
            after = rows[-1][0]
            if len(rows) < batch_size:
                return

    # -- verifying -----------------------------------------------------------------

    async def verify(self, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
        self._check_open()
        # A connection of its own: a long verify must not hold up reads, and it runs in
        # one read transaction, so it sees one consistent snapshot of the log.
        conn = await open_connection(self._path)
        try:
            return await run_in_thread(conn, lambda raw: _verify(raw, anchor))
        finally:
            await conn.close()

    # -- lifecycle -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the event store is closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        self._new_events.set()
        try:
            await self._writer_task
        finally:
            self._inline.close()
            await self._writer.close()
            await self._reader.close()


def _probe_write(conn: sqlite3.Connection) -> None:
    """Take the write lock and change a row without changing it, then roll back: fails as
    a write would (a read-only file, a lock held too long, an I/O error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE chain_head SET position = position")
    finally:
        conn.execute("ROLLBACK")


def _fetch_all(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _open_inline(path: str) -> sqlite3.Connection:
    """The connection for small reads on the event loop's thread: read-only, and never
    waiting for a lock (``busy_timeout`` 0: a busy read is retried in the reader thread)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise translate_error(exc) from exc
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA query_only = 1")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise translate_error(exc) from exc
        raise
    return conn


def _verify(conn: sqlite3.Connection, anchor: tuple[int, bytes] | None) -> VerifyReport:
    verifier = ChainVerifier(anchor)
    conn.execute("BEGIN")
    try:
        after = 0
        while verifier.finding is None:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS}"
                " FROM events e LEFT JOIN streams s ON s.stream_id = e.stream_id"
                " WHERE e.position > ? ORDER BY e.position LIMIT ?",
                (after, _VERIFY_BATCH),
            ).fetchall()
            if not rows:
                break
            for row in rows:
                if not verifier.feed_row(row):
                    break
            after = rows[-1][0]
        head = conn.execute("SELECT position, hash FROM chain_head").fetchone()
    finally:
        conn.execute("COMMIT")
    return verifier.finish((int(head[0]), bytes(head[1])) if head else None)
