"""Projections in PostgreSQL, shared by several service instances, with one active runner.

:class:`PostgresProjectionDatabase` keeps the projection tables and ``projection_checkpoints``
in one schema (the DSN's ``search_path``, or ``schema=``). Every instance's runner uses it:

* **Writes** (a batch, a reset, the setup) are one transaction each on the runner's own
  *writer* connection. The transaction first takes ``pg_advisory_xact_lock`` on a key of
  the schema, so writers of the schema take turns as on SQLite (``BEGIN IMMEDIATE``); the
  checkpoints read inside it are then the latest, rows and checkpoint commit together, and
  a session that dies mid-batch takes the batch with it (PostgreSQL rolls it back).
* **Leadership.** :meth:`lead` takes ``pg_try_advisory_lock`` (session-level) on a key of
  the schema and the projection names, on the writer connection, and keeps it for as long
  as that session lives: the holder is the *leader*, whose ``run()`` applies; the others
  are *followers*. Holding it on the writer means a leader whose connection dies can no
  longer write either; PostgreSQL releases the lock with the session.
* **Following.** The writer connection LISTENs on :data:`CHANNEL`; every write transaction
  NOTIFYs it (delivered at commit) with the schema as payload. A follower re-reads the
  checkpoints when told, and at least every ``poll_interval`` seconds in case a
  notification was lost; it tries the lock every ``lock_retry_interval`` seconds, so when
  the leader's instance dies a follower takes over from the committed checkpoints.
* **Reads** go to a small pool (``readers`` connections), each call in one read-only
  ``REPEATABLE READ`` transaction (one snapshot).

Functions run in a worker thread of the database's own pool with a
:class:`~projections.pg_bridge.PgBridge` on the connection, while the event loop serves the
bridge's statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from eventstore.dsn import redact_dsn
from eventstore.errors import EventStoreError
from projections.database import Dialect, ProjectionDatabase, SqlConnection
from projections.pg_bridge import PgBridge, is_transient, translate_error

T = TypeVar("T")

CHANNEL: Final = "postback_projections"
"""The NOTIFY channel of checkpoint changes (payload: the schema)."""


def advisory_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for ``parts`` (stable across processes)."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def leader_key(schema: str, names: Sequence[str]) -> int:
    """The leadership lock of the projections ``names`` in ``schema``."""
    return advisory_key("postback-projections-leader", schema, *sorted(names))


def writers_key(schema: str) -> int:
    """The lock every write transaction of ``schema`` takes first."""
    return advisory_key("postback-projections-writers", schema)


def redact(dsn: str) -> str:
    """``dsn`` without its password (see :func:`eventstore.dsn.redact_dsn`)."""
    return redact_dsn(dsn)


def _raise_translated(exc: BaseException) -> None:
    translated = translate_error(exc)
    if translated is not exc:
        raise translated from exc


class PostgresProjectionDatabase(ProjectionDatabase):
    """See the module docstring. One per runner; connections are made on :meth:`open`.

    ``schema``: where the tables are (default: the DSN's ``search_path``; it must exist).
    ``lock_retry_interval``: how often a follower tries to become the leader (seconds).
    ``poll_interval``: how often a follower re-reads the checkpoints without a NOTIFY.
    ``readers``: the size of the pool :meth:`read` uses (and of the worker threads).
    """

    dialect: Dialect = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        lock_retry_interval: float = 2.0,
        poll_interval: float = 5.0,
        readers: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        self._dsn = dsn
        quoted = None if schema is None else '"' + schema.replace('"', '""') + '"'
        self._settings = None if quoted is None else {"search_path": quoted}
        self._lock_retry_interval = lock_retry_interval
        self._poll_interval = poll_interval
        self._readers = readers
        self._connect_timeout = connect_timeout
        self._schema = ""
        self._writer: Any = None
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._pool_lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._leader = False
        self._next_attempt = 0.0
        self._changes = 0
        self._changed = asyncio.Event()

    @property
    def schema(self) -> str:
        """The schema the tables are in (known once open)."""
        return self._schema

    @property
    def backend_pid(self) -> int | None:
        """The server process of the writer session (None when not connected)."""
        writer = self._writer
        return None if writer is None or writer.is_closed() else int(writer.get_server_pid())

    def describe(self) -> str:
        return f"{redact(self._dsn)} (schema {self._schema or '?'})"

    # -- connections ----------------------------------------------------------------------

    async def _connect(self) -> Any:
        try:
            return await asyncpg.connect(
                self._dsn, timeout=self._connect_timeout, server_settings=self._settings
            )
        except BaseException as exc:
            _raise_translated(exc)
            raise

    async def _writer_connection(self) -> Any:
        """The writer, (re)connected and listening. Call with ``self._lock`` held."""
        if self._writer is not None and not self._writer.is_closed():
            return self._writer
        self._writer = None
        self._leader = False
        conn = await self._connect()
        try:
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise EventStoreError(
                    f"PostgreSQL: no schema to keep projections in ({self.describe()})"
                )
            await conn.add_listener(CHANNEL, self._on_notify)
            conn.add_termination_listener(self._on_terminated)
        except BaseException as exc:
            conn.terminate()
            _raise_translated(exc)
            raise
        self._schema = str(schema)
        self._writer = conn
        return conn

    def _discard_writer(self) -> None:
        writer, self._writer = self._writer, None
        self._leader = False
        if writer is not None and not writer.is_closed():
            writer.terminate()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self._schema:
            self._bump()

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._writer:
            self._leader = False
            self._bump()

    def _bump(self) -> None:
        self._changes += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def open(self) -> None:
        async with self._lock:
            await self._writer_connection()

    async def _pool_of_readers(self) -> Any:
        async with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._readers,
                        timeout=self._connect_timeout,
                        server_settings=self._settings,
                    )
                except BaseException as exc:
                    _raise_translated(exc)
                    raise
            return self._pool

    async def _in_thread(self, fn: Callable[[SqlConnection], T], conn: Any) -> T:
        """``fn(bridge)`` in a worker thread; if cancelled, the thread is stopped at its next
        statement and waited for, so the connection is free when this returns."""
        loop = asyncio.get_running_loop()
        bridge = PgBridge(conn, loop)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._readers + 1, "projections-pg")
        future = loop.run_in_executor(self._executor, fn, bridge)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            bridge.cancel()
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            raise

    # -- transactions ---------------------------------------------------------------------

    async def transaction(self, fn: Callable[[SqlConnection], T], *, notify: bool = False) -> T:
        async with self._lock:
            conn = await self._writer_connection()
            try:
                return await self._write(conn, fn, notify)
            except BaseException as exc:
                if is_transient(exc) or isinstance(exc, asyncio.CancelledError):
                    self._discard_writer()  # its state is unknown: a new session next time
                _raise_translated(exc)
                raise

    async def _write(self, conn: Any, fn: Callable[[SqlConnection], T], notify: bool) -> T:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", writers_key(self._schema))
            result = await self._in_thread(fn, conn)
            if notify:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._schema)
        except BaseException:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await transaction.rollback()
            raise
        await transaction.commit()
        return result

    async def read(self, fn: Callable[[SqlConnection], T]) -> T:
        pool = await self._pool_of_readers()
        try:
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                result: T = await self._in_thread(fn, conn)
                return result
        except BaseException as exc:
            _raise_translated(exc)
            raise

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[SqlConnection]:
        pool = await self._pool_of_readers()
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield PgBridge(conn, asyncio.get_running_loop())

    # -- leadership -----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leader and self._writer is not None and not self._writer.is_closed()

    async def lead(self, names: Sequence[str]) -> bool:
        if self.is_leader:
            return True
        self._leader = False
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_attempt:
            return False
        self._next_attempt = loop.time() + self._lock_retry_interval
        async with self._lock:
            conn = await self._writer_connection()
            try:
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", leader_key(self._schema, names)
                )
            except BaseException as exc:
                if is_transient(exc):
                    self._discard_writer()
                _raise_translated(exc)
                raise
            self._leader = bool(got)
        return self._leader

    @property
    def changes(self) -> int:
        return self._changes

    async def wait_for_change(self, seen: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._poll_interval
        if not self._leader and self._next_attempt:
            # Time to try the lock again (a runner that never tries, follow_only, has
            # no such time: it waits for a NOTIFY or the poll interval).
            deadline = min(deadline, max(self._next_attempt, loop.time()))
        while self._changes <= seen and (remaining := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        """Release the connections (and the leadership); :meth:`open` may connect again."""
        async with self._lock:
            writer, self._writer = self._writer, None
            self._leader = False
            if writer is not None and not writer.is_closed():
                try:
                    await asyncio.wait_for(writer.close(), self._connect_timeout)
                except Exception:
                    writer.terminate()
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._connect_timeout)
            except Exception:
                pool.terminate()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


@contextlib.asynccontextmanager
async def temporary_schema(dsn: str, prefix: str = "projections_tmp_") -> AsyncIterator[str]:
    """A new, empty schema (its name), dropped with everything in it afterwards: for a
    fresh replay to compare with (``PostgresProjectionDatabase(dsn, schema=name)``)."""
    name = prefix + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    try:
        yield name
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
