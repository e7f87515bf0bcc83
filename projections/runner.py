"""Projections: read models folded from the log, kept in an SQLite file of their own.

A :class:`Projection` turns batches of :class:`~eventstore.base.RecordedEvent` into rows.
A :class:`ProjectionRunner` feeds it the log in order and records, per projection, the
position it has applied up to (its *checkpoint*, in ``projection_checkpoints``).

* Rows and checkpoint commit in the **same** transaction (``BEGIN IMMEDIATE ... COMMIT``),
  so a crash never skips an event nor applies one twice: after a restart the runner
  resumes from the checkpoint, and everything after it was rolled back.
* The checkpoint is read *inside* that transaction: several runners (processes) on the same
  file never apply an event twice either; whoever commits first wins, the others skip.
* Each transaction is one call in aiosqlite's worker thread: the event loop never blocks.
* A projection's tables have no migrations: to change a schema, change the projection's
  ``name`` (a new checkpoint, built from position 0) or call :meth:`ProjectionRunner.rebuild`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, TypeVar

import aiosqlite

from eventstore.base import RecordedEvent
from eventstore.errors import StoreUnavailableError
from eventstore.sqlite import SQLiteEventStore, open_connection, run_in_thread

T = TypeVar("T")

log = logging.getLogger(__name__)

CHECKPOINTS_SQL = (
    "CREATE TABLE IF NOT EXISTS projection_checkpoints ("
    " name TEXT PRIMARY KEY, position INTEGER NOT NULL, updated_at TEXT NOT NULL)"
)
_SAVE_CHECKPOINT = (
    "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
    " updated_at = excluded.updated_at"
)
_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0


class Projection(Protocol):
    """A read model. Its methods run in the runner's worker thread, inside its transaction.

    They must only use the connection they are given (no commit, no BEGIN, no asyncio),
    and be deterministic: applying a log in any split of batches gives the same rows.
    """

    @property
    def name(self) -> str:
        """Unique among the runner's projections; the key of its checkpoint."""

    @property
    def schema_sql(self) -> Sequence[str]:
        """``CREATE TABLE/INDEX IF NOT EXISTS`` statements, run when the runner opens."""

    def apply_batch(self, conn: sqlite3.Connection, events: Sequence[RecordedEvent]) -> None:
        """Fold ``events`` (consecutive, in position order, all after the checkpoint)."""

    def reset(self, conn: sqlite3.Connection) -> None:
        """Remove every row (or drop the tables: ``schema_sql`` is run again afterwards)."""


class ProjectionStoppedError(RuntimeError):
    """:meth:`ProjectionRunner.wait_until` cannot finish: the runner closed or failed."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body()
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _read_checkpoints(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT name, position FROM projection_checkpoints").fetchall()
    return {str(name): int(position) for name, position in rows}


def _setup(conn: sqlite3.Connection, projections: Sequence[Projection]) -> dict[str, int]:
    def body() -> dict[str, int]:
        conn.execute(CHECKPOINTS_SQL)
        now = _now()
        for projection in projections:
            for statement in projection.schema_sql:
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO projection_checkpoints (name, position, updated_at)"
                " VALUES (?, 0, ?)",
                (projection.name, now),
            )
        return _read_checkpoints(conn)

    return _transaction(conn, body)


def _apply(
    conn: sqlite3.Connection, projections: Sequence[Projection], events: Sequence[RecordedEvent]
) -> dict[str, int]:
    """Apply ``events`` to every projection behind, with its checkpoint; one transaction."""
    first, last = events[0].position, events[-1].position
    positions = [event.position for event in events]

    def body() -> dict[str, int]:
        stored = _read_checkpoints(conn)  # inside the write lock: another runner may be ahead
        reached: dict[str, int] = {}
        now = _now()
        for projection in projections:
            checkpoint = stored.get(projection.name, 0)
            if first - 1 <= checkpoint < last:
                todo = events[bisect.bisect_right(positions, checkpoint) :]
                projection.apply_batch(conn, todo)
                conn.execute(_SAVE_CHECKPOINT, (projection.name, last, now))
                checkpoint = last
            # checkpoint < first - 1: reset elsewhere; the runner re-reads from there.
            reached[projection.name] = checkpoint
        return reached

    return _transaction(conn, body)


def _reset(conn: sqlite3.Connection, projections: Sequence[Projection]) -> dict[str, int]:
    def body() -> dict[str, int]:
        now = _now()
        for projection in projections:
            projection.reset(conn)
            for statement in projection.schema_sql:
                conn.execute(statement)
            conn.execute(_SAVE_CHECKPOINT, (projection.name, 0, now))
        return _read_checkpoints(conn)

    return _transaction(conn, body)


def projections_path(log_path: str) -> str:
    """Where projections live by default: beside the log, ``x.db`` -> ``x.projections.db``.

    A file of their own: their writes never wait for (or hold up) the log's single
    writer, and they can be deleted and rebuilt from the log at any time.
    """
    root, ext = os.path.splitext(log_path)
    return f"{root}.projections{ext or '.db'}"


class ProjectionRunner:
    """Keeps ``projections`` up to date with the log of ``store`` (in a file of their own).

    Connections are opened on first use (or by :meth:`open`); call :meth:`close` at the end,
    before closing the store. Typical use::

        runner = ProjectionRunner(store, [PostbackLogProjection()])
        task = asyncio.create_task(runner.run())
        ...
        await runner.wait_until(result.last_position)   # read your own writes
        rows = await runner.query(lambda conn: list_postbacks(conn, ...))
        await runner.close()                           # stops run() too
    """

    def __init__(
        self,
        store: SQLiteEventStore,
        projections: Sequence[Projection],
        *,
        batch_size: int = 5000,
        idle_timeout: float = 5.0,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        names = [projection.name for projection in projections]
        if not names:
            raise ValueError("a projection runner needs at least one projection")
        if len(set(names)) != len(names):
            raise ValueError(f"projection names must be unique: {names}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if store.path in ("", ":memory:") or store.path.startswith("file::memory:"):
            raise ValueError("projections need the log in a file, not in memory")
        self._store = store
        self._path = os.fspath(path) if path is not None else projections_path(store.path)
        self._projections = tuple(projections)
        self._batch_size = batch_size
        self._idle_timeout = idle_timeout
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._checkpoints: dict[str, int] = dict.fromkeys(names, 0)
        self._head = 0
        self._advanced = asyncio.Event()
        self._stop = asyncio.Event()
        self._running = 0
        self._run_exited = asyncio.Event()
        self._failure: BaseException | None = None
        self._closed = False

    # -- state -----------------------------------------------------------------------

    @property
    def checkpoints(self) -> Mapping[str, int]:
        """The position each projection has committed up to (as last seen)."""
        return dict(self._checkpoints)

    @property
    def position(self) -> int:
        """The position every projection has applied up to: the lowest checkpoint."""
        return min(self._checkpoints.values())

    @property
    def lag(self) -> int:
        """Events in the log (as last seen) that some projection has not applied yet."""
        return max(0, self._head - self.position)

    def _advance(self, reached: Mapping[str, int]) -> None:
        self._checkpoints.update(reached)
        self._head = max(self._head, *reached.values())
        self._advanced.set()
        self._advanced = asyncio.Event()

    # -- connections -------------------------------------------------------------------

    async def open(self) -> None:
        """Open the connections, create the tables, load the checkpoints. Idempotent."""
        if self._closed:
            raise ProjectionStoppedError("the projection runner is closed")
        async with self._open_lock:
            if self._writer is not None:
                return
            writer = await open_connection(
                self._path,
                [
                    "PRAGMA busy_timeout = 10000",
                    "PRAGMA journal_mode = WAL",
                    # Rows and checkpoint still commit atomically together; a commit lost
                    # on power loss is simply applied again from the log.
                    "PRAGMA synchronous = NORMAL",
                ],
            )
            try:
                stored = await run_in_thread(writer, lambda raw: _setup(raw, self._projections))
                reader = await open_connection(
                    self._path, ["PRAGMA busy_timeout = 10000", "PRAGMA query_only = 1"]
                )
            except BaseException:
                await writer.close()
                raise
            self._writer, self._reader = writer, reader
            self._advance({name: stored.get(name, 0) for name in self._checkpoints})

    async def _connections(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        await self.open()
        if self._writer is None or self._reader is None:  # closed meanwhile
            raise ProjectionStoppedError("the projection runner is closed")
        return self._writer, self._reader

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read-only connection, in its thread (one snapshot per call
        if ``fn`` opens a transaction; otherwise per statement). sqlite3 errors become
        :class:`~eventstore.errors.StoreUnavailableError`."""
        _, reader = await self._connections()
        return await run_in_thread(reader, fn)

    # -- applying ----------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Apply everything in the log now to every projection; return the position reached."""
        return await self._catch_up(stoppable=False)

    async def _catch_up(self, *, stoppable: bool) -> int:
        writer, _ = await self._connections()
        async with self._apply_lock:
            self._head = max(self._head, await self._store.last_position())
            while True:
                after = self.position
                batch = await self._store.read_all(after, self._batch_size)
                if not batch:
                    return after
                # All of them: _apply skips those whose stored checkpoint is past the batch.
                apply = partial(_apply, projections=self._projections, events=batch)
                reached = await run_in_thread(writer, apply)
                self._advance(reached)
                if len(batch) < self._batch_size and self.position >= batch[-1].position:
                    return self.position
                if stoppable and self._stop.is_set():
                    return self.position

    async def run(self) -> None:
        """Catch up, then follow the log as it grows, until :meth:`stop`, :meth:`close` or
        cancellation. Transient database errors (locked, I/O) are logged and retried with
        backoff; any other error ends ``run()`` (raised) and fails :meth:`wait_until`.
        After :meth:`stop`, ``run()`` returns at once: a stopped runner stays stopped."""
        self._running += 1
        self._run_exited.clear()
        self._failure = None
        delay = _RETRY_FIRST
        try:
            while not self._stop.is_set():
                try:
                    position = await self._catch_up(stoppable=True)
                    if self._stop.is_set():
                        break
                    delay = _RETRY_FIRST
                    await self._wait_for_log(position)
                except StoreUnavailableError as exc:
                    log.warning("projections: %s; retrying in %.1f s", exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    delay = min(delay * 2, _RETRY_MAX)
        except Exception as exc:
            self._failure = exc
            self._advanced.set()
            raise
        finally:
            self._running -= 1
            if not self._running:
                self._run_exited.set()

    async def _wait_for_log(self, position: int) -> None:
        waiting = asyncio.ensure_future(
            self._store.wait_for_events(position, timeout=self._idle_timeout)
        )
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopping):
                task.cancel()
            await asyncio.gather(waiting, stopping, return_exceptions=True)
        if waiting.done() and not waiting.cancelled():
            if (exc := waiting.exception()) is not None:
                raise exc
            self._head = max(self._head, waiting.result())

    def stop(self) -> None:
        """Ask :meth:`run` to return (after the transaction in progress, if any)."""
        self._stop.set()

    async def wait_until(self, position: int) -> None:
        """Return once every projection has applied the log up to ``position``.

        Does not apply anything itself: something must be running :meth:`run` (or calling
        :meth:`catch_up`). Raises :class:`ProjectionStoppedError` if the runner closes or
        ``run()`` fails first. Bound it with ``asyncio.timeout`` where needed.
        """
        while self.position < position:
            if self._closed or self._failure is not None:
                raise ProjectionStoppedError(
                    "the projection runner " + ("closed" if self._closed else "failed")
                ) from self._failure
            await self._advanced.wait()

    async def rebuild(self, names: Sequence[str] | None = None) -> int:
        """Reset the projections named (all by default) and apply the log again from 0.

        The reset commits first: until the rebuild catches up, readers see partial rows
        (and :attr:`lag` shows how far it is). Returns the position reached.
        """
        chosen = [p for p in self._projections if names is None or p.name in names]
        unknown = set(names or ()) - {p.name for p in chosen}
        if unknown:
            raise ValueError(f"unknown projections: {sorted(unknown)}")
        writer, _ = await self._connections()
        async with self._apply_lock:
            stored = await run_in_thread(writer, lambda raw: _reset(raw, chosen))
            self._checkpoints.update({p.name: stored.get(p.name, 0) for p in chosen})
        return await self.catch_up()

    async def close(self) -> None:
        """Stop :meth:`run`, wait for it, close the connections. Idempotent."""
        self._stop.set()
        if self._running:
            await self._run_exited.wait()
        self._closed = True
        self._advanced.set()
        async with self._open_lock, self._apply_lock:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    await conn.close()
            self._writer = self._reader = None
