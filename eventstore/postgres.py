"""The PostgreSQL backend, on asyncpg: the same contract and hash chain as the SQLite one.

Connections: a dedicated **writer** connection (one writer task with group commit, as in
:mod:`eventstore.sqlite`), a small **pool** for reads and verify, and a dedicated
**listener** connection (:mod:`eventstore.postgres_listen`). The log lives in the first
existing schema of the DSN's ``search_path`` (``?search_path=name`` in the DSN).

**Positions are gap-free and safe for catch-up readers, across processes.** Positions do
not come from a sequence: a sequence hands out numbers at insert time, in *start* order,
while rows become visible in *commit* order, and a rolled-back insert leaves a hole. A
reader that has read up to 11 while 10 is still uncommitted moves past 10 and never sees
it (the gap problem of Marten and Axon). Here every transaction that adds events (a batch
of appends from any process, or an import) first locks the single ``chain_head`` row
(``SELECT ... FOR UPDATE``), takes positions ``head + 1 ...`` under that lock, moves the
head and commits while still holding it. The hash chain needs this anyway: each hash is
computed from its predecessor's, so appends are serialized by nature. Consequences:

* positions are assigned and committed in one order across all processes: a transaction
  can only take position ``n + 1`` after the one that took ``n`` has committed (PostgreSQL
  makes a commit visible before it releases the committer's locks), so no reader can see
  ``n + 1`` without ``n``, whatever its snapshot;
* a rolled-back batch leaves no hole: the next one starts from the same head;
* the head, the stream versions and the idempotency check are read inside the locked
  transaction (READ COMMITTED sees everything committed before the lock was granted), so
  they are exact with any number of writers and no version cache is needed.

The price is one writer at a time per log, which group commit amortizes (one transaction,
one WAL flush per batch), as on SQLite.

**Durable by default**: ``synchronous_commit`` stays on (if the server or the DSN turned it
off, the writer turns it back on); ``durability="normal"`` (explicit only) turns it off.

**Waking waiters**: appends through this store object wake :meth:`wait_for_events` at once;
appends by other processes wake it through ``LISTEN``/``NOTIFY`` (sent in the append's
transaction, delivered on commit). No polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Collection, Sequence

from eventstore.appending import (
    AppendRequest,
    check_expected_version,
    encode_events,
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
from eventstore.errors import EventStoreError, InvalidEventError, StoreClosedError
from eventstore.postgres_driver import (
    DEFAULT_CONNECT_TIMEOUT,
    DRIVER_ERRORS,
    Connection,
    Pool,
    connect,
    create_pool,
    translated,
)
from eventstore.postgres_import import import_events
from eventstore.postgres_listen import Listener, channel_for
from eventstore.postgres_schema import current_schema, migrate
from eventstore.postgres_writer import BatchObserver, Durability, Writer, connect_writer
from eventstore.reading import EVENT_COLUMNS, SELECT_EVENTS, decode_rows, lean_reader

_VERIFY_BATCH = 10_000
_CLOSE_TIMEOUT = 10.0


class PostgresEventStore(EventStore):
    """The event store in one PostgreSQL schema. Create it with :meth:`open`."""

    def __init__(
        self,
        *,
        dsn: str,
        writer: Connection,
        pool: Pool,
        channel: str,
        durability: Durability,
        connect_timeout: float,
        upcasters: Upcasters | None,
        max_batch_events: int,
        on_batch: BatchObserver | None,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._channel = channel
        self._connect_timeout = connect_timeout
        self._upcasters = upcasters if upcasters else None
        self._new_events = asyncio.Event()
        self._last_committed = 0
        self._closed = False
        self._listener = Listener(self._connect_listener, channel, self._advance)
        self._writer = Writer(
            writer,
            dsn=dsn,
            durability=durability,
            connect_timeout=connect_timeout,
            channel=channel,
            max_batch_events=max_batch_events,
            on_batch=on_batch,
            on_committed=self._advance,
        )

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        durability: Durability = "full",
        upcasters: Upcasters | None = None,
        max_batch_events: int = 5000,
        pool_size: int = 4,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_batch: BatchObserver | None = None,
    ) -> PostgresEventStore:
        """Open (creating or upgrading) the log in the schema the DSN's search_path names.

        ``dsn`` is a ``postgresql://`` URL; its query parameters other than libpq's are
        server settings (``?search_path=myschema``). The schema must exist. Uses
        ``pool_size + 2`` connections at most: the writer, the listener and the pool.
        ``on_batch(events, seconds)`` is called after each group commit (for metrics).
        """
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        writer = await connect_writer(dsn, durability, connect_timeout)
        pool: Pool = None
        store: PostgresEventStore | None = None
        try:
            with translated():
                schema = await current_schema(writer)
                await migrate(writer)
            pool = await create_pool(dsn, size=pool_size, timeout=connect_timeout)
            store = cls(
                dsn=dsn,
                writer=writer,
                pool=pool,
                channel=channel_for(schema),
                durability=durability,
                connect_timeout=connect_timeout,
                upcasters=upcasters,
                max_batch_events=max_batch_events,
                on_batch=on_batch,
            )
            await store._listener.start()
        except BaseException:
            if store is not None:
                await store.close()
            else:
                writer.terminate()
                if pool is not None:
                    pool.terminate()
            raise
        return store

    async def __aenter__(self) -> PostgresEventStore:
        return self

    @property
    def channel(self) -> str:
        """The NOTIFY channel on which this log's commits are announced."""
        return self._channel

    @property
    def writable(self) -> bool:
        """Whether appends can be taken: open, and the writer task is running."""
        return not self._closed and self._writer.alive

    @property
    def write_failure(self) -> EventStoreError | None:
        return self._writer.failure

    async def check_writable(self) -> None:
        self._check_open()
        try:
            with translated():
                async with self._pool.acquire() as conn:
                    await _probe_write(conn)
        except EventStoreError as exc:
            self._writer.failure = exc
            raise
        self._writer.failure = None

    async def _connect_listener(self) -> Connection:
        # Named, so that an operator can tell this forever idle connection in pg_stat_activity.
        settings = {"application_name": f"{self._channel} listener"}
        return await connect(self._dsn, timeout=self._connect_timeout, server_settings=settings)

    # -- appending ---------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        self._check_open()
        if type(stream) is not str or not stream:
            raise InvalidEventError("a stream name must be a non-empty string")
        expected = check_expected_version(expected_version)
        encoded = encode_events(events)
        request = AppendRequest(stream, utf8(stream, "stream name"), encoded, expected)
        if "\x00" in stream or any("\x00" in e.type for e in request.events):
            raise InvalidEventError("PostgreSQL text cannot hold NUL: not in a stream or type")
        return await self._writer.submit(request)

    def _advance(self, position: int) -> None:
        """The log reaches ``position`` (committed here or notified): wake the waiters."""
        if position > self._last_committed:
            self._last_committed = position
            self._new_events.set()
            self._new_events = asyncio.Event()

    # -- importing ---------------------------------------------------------------

    async def import_raw(self, events: Sequence[RawEvent]) -> int:
        """Append rows copied from another log as they are; return the new last position.

        Positions, versions, ids, recorded times and hashes are kept, so ``verify`` passes
        here exactly as it did there. Only if the first position is ``last_position() + 1``
        and every row continues the chain from the current head; otherwise
        :class:`~eventstore.errors.TamperedLogError` names the first offending position
        and nothing is imported. One transaction per call (feed it ``iter_raw`` batches).
        """
        self._check_open()
        with translated():
            async with self._pool.acquire() as conn:
                position = await import_events(conn, events, self._channel)
        self._advance(position)
        return position

    async def iter_raw(
        self, after: int = 0, batch_size: int = 1000
    ) -> AsyncIterator[list[RawEvent]]:
        """Batches of the log after ``after`` exactly as stored (for copying it elsewhere)."""
        while True:
            self._check_open()
            with translated():
                rows = await self._pool.fetch(
                    f"{SELECT_EVENTS} WHERE e.position > $1 ORDER BY e.position LIMIT $2",
                    after,
                    batch_size,
                )
            if not rows:
                return
            yield [RawEvent(*row) for row in rows]
            after = rows[-1][0]
            if len(rows) < batch_size:
                return

    # -- reading -----------------------------------------------------------------

    async def _fetch(self, sql: str, *args: object) -> list[RecordedEvent]:
        self._check_open()
        with translated():
            rows = await self._pool.fetch(sql, *args)
        return decode_rows(rows, self._upcasters)

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        if "\x00" in stream:  # no such stream can be stored (text holds no NUL)
            self._check_open()
            return []
        return await self._fetch(
            f"{SELECT_EVENTS} WHERE s.name = $1 AND e.version >= $2 ORDER BY e.version LIMIT $3",
            stream,
            from_version,
            limit,
        )

    async def stream_version(self, stream: str) -> int:
        self._check_open()
        if "\x00" in stream:
            return 0
        with translated():
            version = await self._pool.fetchval(
                "SELECT version FROM streams WHERE name = $1", stream
            )
        return int(version or 0)

    async def read_all(
        self, after: int = 0, limit: int = 1000, *, leave_out: Collection[str] = ()
    ) -> list[RecordedEvent]:
        reader = lean_reader(leave_out)
        self._check_open()
        with translated():
            rows = await self._pool.fetch(
                f"{reader.select} WHERE e.position > $1 ORDER BY e.position LIMIT $2", after, limit
            )
        return reader.decode(rows, self._upcasters)

    async def get_event(self, event_id: uuid.UUID) -> RecordedEvent | None:
        found = await self._fetch(f"{SELECT_EVENTS} WHERE e.event_id = $1", event_id.bytes)
        return found[0] if found else None

    async def read_at(self, positions: Collection[int]) -> list[RecordedEvent]:
        self._check_open()
        wanted = positions_to_read(positions)
        if not wanted:
            return []
        return await self._fetch(
            f"{SELECT_EVENTS} WHERE e.position = ANY($1::bigint[]) ORDER BY e.position", wanted
        )

    async def last_position(self) -> int:
        self._check_open()
        with translated():
            position = await self._pool.fetchval("SELECT position FROM chain_head")
        self._advance(int(position or 0))
        return self._last_committed

    async def wait_for_events(self, after: int, timeout: float | None = None) -> int:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self._last_committed <= after:
            await self.last_position()  # "at once if there already is one", from anyone
        while self._last_committed <= after:
            wait = None if deadline is None else deadline - loop.time()
            if wait is not None and wait <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_events.wait(), wait)
            self._check_open()
        return self._last_committed

    # -- verifying -----------------------------------------------------------------

    async def verify(self, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
        self._check_open()
        # A pooled connection, in one read-only REPEATABLE READ transaction: one consistent
        # snapshot of the log and its head, taken without blocking (or being blocked by)
        # the writer.
        with translated():
            async with self._pool.acquire() as conn:
                return await _verify(conn, anchor)

    # -- lifecycle -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the event store is closed")

    async def close(self) -> None:
        """Finish pending appends, then release the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._new_events.set()
        try:
            await self._writer.close()
        finally:
            await self._listener.close()
            try:
                await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT)
            except DRIVER_ERRORS:
                self._pool.terminate()


async def _verify(conn: Connection, anchor: tuple[int, bytes] | None) -> VerifyReport:
    verifier = ChainVerifier(anchor)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        after = 0
        while verifier.finding is None:
            rows = await conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events e"
                " LEFT JOIN streams s ON s.stream_id = e.stream_id"
                " WHERE e.position > $1 ORDER BY e.position LIMIT $2",
                after,
                _VERIFY_BATCH,
            )
            if not rows:
                break
            for row in rows:
                if not verifier.feed_row(tuple(row)):
                    break
            after = rows[-1][0]
        head = await conn.fetchrow("SELECT position, hash FROM chain_head")
    return verifier.finish((int(head[0]), bytes(head[1])) if head else None)


PROBE_LOCK_TIMEOUT = 2.0
"""Seconds :meth:`PostgresEventStore.check_writable` waits for the chain head's lock."""


async def _probe_write(conn: Connection) -> None:
    """Change the chain head without changing it, then roll back: fails as the writer's
    statements would (a read-only server such as a standby, a missing grant, a lock held
    too long)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(f"SET LOCAL lock_timeout = '{round(PROBE_LOCK_TIMEOUT * 1000)}ms'")
        await conn.execute("UPDATE chain_head SET position = position")
    finally:
        await transaction.rollback()
