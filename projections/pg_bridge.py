"""The synchronous :class:`~projections.database.SqlConnection` of PostgreSQL.

Projections are synchronous code that runs in a worker thread; asyncpg is asynchronous and
lives in the event loop. :class:`PgBridge`, used from the worker thread, hands each
statement to the loop (``asyncio.run_coroutine_threadsafe(...).result()``) to run on the
asyncpg connection, inside whatever transaction the caller opened there. One hop costs
about 0.1 ms on top of the statement, so projections keep their statements per batch few
(``executemany``, one query for many keys with :func:`projections.database.in_chunks`).

Statements are written for SQLite and rewritten once each (cached) by :func:`to_postgres`:
``?`` becomes ``$1..$n``; in ``CREATE TABLE``, ``BLOB`` becomes ``BYTEA`` and ``WITHOUT
ROWID`` goes. Rows come back as tuples, as from sqlite3.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from eventstore.errors import EventStoreError, StoreUnavailableError
from projections.database import Dialect

T = TypeVar("T")

STREAM_CHUNK: Final = 2000
"""Rows fetched per hop by :meth:`PgBridge.stream`."""

_TOKENS: Final = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|\?")
_CREATE_TABLE: Final = re.compile(r"^\s*CREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\b", re.IGNORECASE)
_BLOB: Final = re.compile(r"\bBLOB\b", re.IGNORECASE)
_WITHOUT_ROWID: Final = re.compile(r"\bWITHOUT\s+ROWID\b", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def to_postgres(sql: str) -> str:
    """``sql`` (portable, as SQLite reads it) as PostgreSQL reads it (see the docstring).

    ``?`` inside quotes or ``--`` comments is left alone.
    """
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group() != "?":
            return match.group()
        count += 1
        return f"${count}"

    sql = _TOKENS.sub(number, sql)
    if _CREATE_TABLE.match(sql):
        sql = _WITHOUT_ROWID.sub("", _BLOB.sub("BYTEA", sql))
    return sql


TRANSIENT: Final[tuple[type[BaseException], ...]] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # terminated by an administrator
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.InvalidCachedStatementError,  # a table was recreated meanwhile
)
"""Errors after which a retry (on a new connection if need be) can succeed."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


def translate_error(exc: BaseException) -> BaseException:
    """asyncpg's (and the network's) errors as the store's own; anything else unchanged."""
    if is_transient(exc):
        return StoreUnavailableError(f"PostgreSQL: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return EventStoreError(f"PostgreSQL: {exc}")
    return exc


class PgCursor:
    """The rows of one statement (all fetched), read like an sqlite3 cursor."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = iter(rows)

    def fetchone(self) -> Any:
        return next(self._rows, None)

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return self._rows


class BridgeCancelledError(RuntimeError):
    """The transaction a bridge worked in was abandoned (cancelled); no more statements."""


class PgBridge:
    """An asyncpg connection seen synchronously from a worker thread (never from the loop).

    ``conn`` belongs to ``loop``; the caller owns the transaction (or its absence: then
    each statement commits on its own, and ``BEGIN``/``COMMIT`` may be sent as statements).
    """

    dialect: Dialect = "postgres"

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self._cancelled = threading.Event()

    @property
    def connection(self) -> Any:
        """The asyncpg connection (for code running in the event loop)."""
        return self._conn

    def cancel(self) -> None:
        """Make every later statement raise :class:`BridgeCancelledError` (thread-safe)."""
        self._cancelled.set()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._cancelled.is_set():
            coro.close()
            raise BridgeCancelledError("the transaction was abandoned")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("PgBridge is for worker threads; in the event loop, use asyncpg")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PgCursor:
        records = self._call(self._conn.fetch(to_postgres(sql), *parameters))
        return PgCursor([tuple(record) for record in records])

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        rows = list(parameters)
        if rows:
            self._call(self._conn.executemany(to_postgres(sql), rows))

    @property
    def in_transaction(self) -> bool:
        return bool(self._conn.is_in_transaction())

    def stream(
        self, sql: str, parameters: Sequence[Any] = (), chunk: int = STREAM_CHUNK
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of a query, ``chunk`` at a time through a server-side cursor (never all
        in memory) in a transaction; outside one (a cursor needs one), all at once."""
        if not self.in_transaction:
            yield from self.execute(sql, parameters)
            return
        cursor = self._call(self._open_cursor(to_postgres(sql), parameters))
        while records := self._call(cursor.fetch(chunk)):
            yield from (tuple(record) for record in records)

    async def _open_cursor(self, sql: str, parameters: Sequence[Any]) -> Any:
        return await self._conn.cursor(sql, *parameters)
