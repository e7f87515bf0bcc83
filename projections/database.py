"""Where projections keep their rows: an SQLite file, or PostgreSQL (:mod:`.pg_database`).

A :class:`ProjectionDatabase` gives the runner write transactions, read-only queries and,
on a database shared by several service instances, the leadership of one active runner.
Projections themselves stay synchronous: they are handed an :class:`SqlConnection`, which
``sqlite3.Connection`` is as it is (no wrapper, no overhead), and which on PostgreSQL is a
bridge (:class:`projections.pg_bridge.PgBridge`) running each statement on an asyncpg
connection in the event loop while the projection runs in a worker thread.

**Portable SQL: the rule for every projection** (and every query function)

* Placeholders are ``?`` (the bridge numbers them ``$1..$n``); one statement per call.
* Types: ``BIGINT`` for integers (positions, times in µs, ids, money units, counters,
  anything taken from event data: PostgreSQL's ``INTEGER`` is 32-bit), ``TEXT``, ``BLOB``
  (``BYTEA`` on PostgreSQL: the bridge rewrites the word in ``CREATE TABLE``, and drops
  ``WITHOUT ROWID``; nothing else is rewritten). No ``REAL``: money is integer units.
  A single integer key that should be clustered on SQLite is ``BIGINT PRIMARY KEY`` with
  ``WITHOUT ROWID`` (``INTEGER PRIMARY KEY`` would be 32-bit on PostgreSQL).
* Upserts are ``INSERT ... ON CONFLICT (key) DO UPDATE SET c = excluded.c`` or
  ``ON CONFLICT DO NOTHING``; never ``INSERT OR REPLACE`` / ``OR IGNORE``. The old row's
  values in ``SET`` are qualified by the table's name (``t.c + excluded.c``).
* No ``json_each``, no ``PRAGMA``, no ``rowid``, no SQLite-only functions: an ``IN`` list
  of many values goes through :func:`in_chunks`. ``WHERE 1 = 1``, not ``WHERE 1``.
* Results must be identical on both: ``SUM`` of a ``BIGINT`` is ``NUMERIC`` on PostgreSQL
  (a :class:`~decimal.Decimal`): convert with ``int()`` in Python; integer ``/`` and ``%``
  truncate toward zero on both (Python's floor differently: keep negative operands out of
  them); text compares by collation on PostgreSQL: order text in Python (code points, as
  SQLite's ``BINARY``) or with ``COLLATE "C"`` where the dialect is known; ``NULL`` sorts
  first on SQLite and last on PostgreSQL: never let its place matter.
* Where a difference is truly unavoidable, :func:`dialect_of` tells the connection's.

Transactions are the runner's (``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL one per batch,
serialized among every writer of the schema by a transaction-level advisory lock): a
projection never commits, begins or sleeps.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar

import aiosqlite

from eventstore.errors import EventStoreError, StoreUnavailableError
from eventstore.sqlite import open_connection, run_in_thread

if sys.platform != "win32":
    import fcntl

T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]

CHUNK_SIZES: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""The sizes of the ``IN`` lists :func:`in_chunks` makes (few distinct statements)."""


class SqlCursor(Protocol):
    """What a statement returns: rows as tuples."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SqlConnection(Protocol):
    """The synchronous connection a projection or a query function is given.

    ``sqlite3.Connection`` satisfies it as is; so does the PostgreSQL bridge. Statements
    follow the portable rule of this module's docstring.
    """

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> SqlCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> object: ...

    @property
    def in_transaction(self) -> bool: ...


def dialect_of(conn: SqlConnection) -> Dialect:
    """``"postgres"`` for the PostgreSQL bridge, ``"sqlite"`` otherwise."""
    dialect: Dialect = getattr(conn, "dialect", "sqlite")
    return dialect


def in_chunks(values: Collection[Any]) -> Iterator[tuple[str, list[Any]]]:
    """``(placeholders, values)`` pairs covering ``values`` (sorted), for ``col IN (...)``.

    Each list is padded (with its last value repeated, which changes no ``IN``) to one of
    :data:`CHUNK_SIZES`, so a few distinct statements serve any number of values (asyncpg
    prepares and caches each distinct statement).
    """
    ordered = sorted(values)
    largest = CHUNK_SIZES[-1]
    for start in range(0, len(ordered), largest):
        chunk = ordered[start : start + largest]
        size = next(size for size in CHUNK_SIZES if size >= len(chunk))
        chunk += [chunk[-1]] * (size - len(chunk))
        yield ", ".join("?" * size), chunk


class ProjectionDatabase(abc.ABC):
    """The runner's database: connections, transactions, and (PostgreSQL) leadership.

    Functions passed to :meth:`transaction` and :meth:`read` run in a worker thread and use
    only the connection they are given. Driver errors become
    :class:`~eventstore.errors.StoreUnavailableError` (transient: the runner retries) or
    :class:`~eventstore.errors.EventStoreError` (a constraint violated in a transaction:
    a bug, on either database); other exceptions pass through unchanged.
    """

    dialect: Dialect

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the rows are, for messages (a path, or a DSN without its password)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect. Idempotent; the runner calls it before anything else."""

    @abc.abstractmethod
    async def transaction(self, fn: Callable[[SqlConnection], T], *, notify: bool = False) -> T:
        """``fn(conn)`` in one write transaction, committed if it returns, rolled back if it
        raises. Writers of the same database run one at a time, so a checkpoint read inside
        ``fn`` is the latest. ``notify``: tell followers (PostgreSQL) once it commits."""

    @abc.abstractmethod
    async def read(self, fn: Callable[[SqlConnection], T]) -> T:
        """``fn(conn)`` on a read-only connection (PostgreSQL: one snapshot per call)."""

    @abc.abstractmethod
    def snapshot(self) -> contextlib.AbstractAsyncContextManager[SqlConnection]:
        """A read-only connection in one snapshot, for one worker thread at a time (not the
        event loop's), while the context is open. :func:`projections.verify` uses it."""

    @property
    def is_leader(self) -> bool:
        """Whether this runner is the one leader: on PostgreSQL the only one that applies in
        :meth:`ProjectionRunner.run`; on SQLite (where all apply) the one that sends."""
        return True

    async def lead(self, names: Sequence[str]) -> bool:
        """Try to be (or stay) the one active runner of the projections ``names``."""
        return True

    @property
    def changes(self) -> int:
        """A counter of checkpoint changes seen from other runners (followers wait on it)."""
        return 0

    async def wait_for_change(self, seen: int) -> None:
        """Wait until :attr:`changes` passes ``seen``, or until it is time to re-read the
        checkpoints or to try :meth:`lead` again, whichever comes first."""
        await asyncio.sleep(1.0)

    def note_change(self) -> None:
        """Another process says it committed checkpoints: wake the followers now (where
        the database cannot tell them itself; PostgreSQL's NOTIFY does, so it ignores it)."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection (and the leadership). Idempotent; :meth:`open` may
        connect again (the runner closes it when opening fails, and retries)."""


_BUGS: Final = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    sqlite3.NotSupportedError,
    sqlite3.InterfaceError,
)
"""What a retry cannot cure (a constraint violated, a misused statement): not transient."""


def _try_flock(path: str) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock, or None if taken."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def write_transaction(conn: sqlite3.Connection, fn: Callable[[SqlConnection], T]) -> T:
    """``fn(conn)`` in a ``BEGIN IMMEDIATE`` transaction: committed, or rolled back (if
    SQLite has not already) and raised; a programming error as ``EventStoreError``."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, _BUGS):
            raise EventStoreError(f"SQLite: {exc}") from exc
        raise
    conn.execute("COMMIT")
    return result


_FOLLOW_REREAD = 1.0


class SQLiteProjectionDatabase(ProjectionDatabase):
    """Projections in an SQLite file of their own (WAL, ``synchronous=NORMAL``).

    Several runners (processes) may share the file: ``BEGIN IMMEDIATE`` makes their write
    transactions take turns, and each re-reads the checkpoints inside its own, so none
    applies an event twice; so every runner applies (:meth:`lead` is always True).

    :attr:`is_leader` still names one of them: the runner holding an exclusive ``flock``
    on ``<file>.lead``, taken in :meth:`lead` when free and held until :meth:`close` (or
    the process's death: the OS releases it). What must happen once per log rather than
    once per runner, the outbox's sends, happens only there.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, scratch: bool = False) -> None:
        """``scratch``: a file to throw away should anything fail (a rebuild's shadow, a
        replay to compare): its journal stays in memory and nothing is synced, which
        makes writing it cheaper. One process only: other connections would be refused
        while it writes (no WAL)."""
        self._path = os.fspath(path)
        self._scratch = scratch
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._lead_fd: int | None = None
        self._changes = 0
        self._changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._lead_fd is not None

    @property
    def changes(self) -> int:
        return self._changes

    def note_change(self) -> None:
        self._changes += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, seen: int) -> None:
        """Until :meth:`note_change` is called, or a second has passed (a follower on
        SQLite re-reads the checkpoints at least that often, should a word be lost)."""
        if self._changes == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), _FOLLOW_REREAD)

    async def lead(self, names: Sequence[str]) -> bool:
        if self._lead_fd is None and sys.platform != "win32":
            self._lead_fd = _try_flock(self._path + ".lead")
        return True

    def _release_lead(self) -> None:
        fd, self._lead_fd = self._lead_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    @property
    def path(self) -> str:
        return self._path

    def describe(self) -> str:
        return self._path

    async def open(self) -> None:
        async with self._lock:
            if self._writer is not None:
                return
            durability = (
                ["PRAGMA journal_mode = MEMORY", "PRAGMA synchronous = OFF"]
                if self._scratch
                else [
                    "PRAGMA journal_mode = WAL",
                    # Rows and checkpoint still commit atomically together; a commit lost
                    # on power loss is simply applied again from the log.
                    "PRAGMA synchronous = NORMAL",
                ]
            )
            try:
                writer = await open_connection(
                    self._path, ["PRAGMA busy_timeout = 10000", *durability]
                )
            except StoreUnavailableError as exc:  # a directory, not a database...
                raise StoreUnavailableError(
                    f"cannot open the projections file {self._path}: {exc} (it holds only"
                    " what the log rebuilds: once it is moved away, the projections are"
                    " built again from the log)"
                ) from exc
            try:
                reader = await open_connection(
                    self._path, ["PRAGMA busy_timeout = 10000", "PRAGMA query_only = 1"]
                )
            except BaseException:
                await writer.close()
                raise
            self._writer, self._reader = writer, reader

    def _connections(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._writer is None or self._reader is None:
            raise RuntimeError("the projection database is not open")
        return self._writer, self._reader

    async def transaction(self, fn: Callable[[SqlConnection], T], *, notify: bool = False) -> T:
        writer, _ = self._connections()
        return await run_in_thread(writer, lambda raw: write_transaction(raw, fn))

    async def read(self, fn: Callable[[SqlConnection], T]) -> T:
        _, reader = self._connections()
        return await run_in_thread(reader, fn)

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[SqlConnection]:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA query_only = 1")
            conn.execute("BEGIN")
            return conn

        conn = await asyncio.to_thread(connect)
        try:
            yield conn
        finally:
            conn.close()  # ends the read transaction (nothing was written)

    async def close(self) -> None:
        async with self._lock:
            self._release_lead()
            for conn in (self._writer, self._reader):
                if conn is not None:
                    await conn.close()
            self._writer = self._reader = None
