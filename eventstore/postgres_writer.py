"""The writer of a PostgreSQL store object: a queue of appends, one task, one connection.

Appends from any number of tasks are queued; the single writer task takes everything
pending (up to ``max_batch_events``) and commits it as one transaction
(:func:`eventstore.postgres_batch.commit_batch`), then releases each caller with its own
outcome; while a batch commits, the next one gathers. Callers are released only after
the commit.

The connection is dedicated to the writer and reopened when it is lost (the batch that
lost it fails with :class:`~eventstore.errors.StoreUnavailableError`; the next one
reconnects). Durable by default: ``synchronous_commit`` is kept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Literal

from eventstore.appending import AppendRequest, Outcome, batch_size, settle
from eventstore.base import AppendResult
from eventstore.errors import EventStoreError, StoreUnavailableError
from eventstore.postgres_batch import commit_batch
from eventstore.postgres_driver import (
    DRIVER_ERRORS,
    Connection,
    connect,
    is_connection_lost,
    translate_error,
    translated,
)

Durability = Literal["full", "normal"]
BatchObserver = Callable[[int, float], None]


WRITER_LOCK_TIMEOUT = 10.0
"""Seconds a group commit waits for a lock (the ``chain_head`` row, which every append
transaction of every instance locks) before it gives up: its appends then fail as
unavailable (HTTP 503, which partners retry) instead of hanging for as long as, say, an
operator's forgotten ``psql`` transaction holds the row. Instances hold it for a commit
each, milliseconds."""


async def connect_writer(dsn: str, durability: Durability, timeout: float) -> Connection:
    """A connection for the writer, with ``synchronous_commit`` as ``durability`` requires.

    ``full``: on, even if the server's configuration or the DSN turned it off (the store
    promises that an acknowledged append is durable); stricter settings (``remote_apply``
    ...) are kept. ``normal``: off (the last commits may be lost on a server crash).
    """
    # The writer's statements take arrays (unnest) of 1 to thousands of elements. A generic
    # plan, which PostgreSQL switches a prepared statement to after five executions,
    # cannot know their lengths and joins them badly: planning each execution for its
    # arrays measured 3 to 14 times faster for batches of hundreds of events.
    settings = {
        "plan_cache_mode": "force_custom_plan",
        "lock_timeout": f"{round(WRITER_LOCK_TIMEOUT * 1000)}ms",
    }
    if durability == "normal":
        settings["synchronous_commit"] = "off"
    conn = await connect(dsn, timeout=timeout, server_settings=settings)
    if durability == "full":
        try:
            with translated():
                if await conn.fetchval("SHOW synchronous_commit") == "off":
                    await conn.execute("SET synchronous_commit = on")
        except BaseException:
            conn.terminate()
            raise
    return conn


def as_store_error(exc: Exception) -> EventStoreError:
    """Any exception of a batch as the store's own (only Exceptions: never cancellation)."""
    if isinstance(exc, EventStoreError):
        return exc
    if isinstance(exc, DRIVER_ERRORS):
        return translate_error(exc)
    return StoreUnavailableError(f"{type(exc).__name__}: {exc}")


class Writer:
    """Group commit for one store object. ``on_committed(n)``: the log now reaches ``n``."""

    def __init__(
        self,
        conn: Connection,
        *,
        dsn: str,
        durability: Durability,
        connect_timeout: float,
        channel: str,
        max_batch_events: int,
        on_batch: BatchObserver | None,
        on_committed: Callable[[int], None],
    ) -> None:
        self._conn: Connection | None = conn
        self._dsn = dsn
        self._durability = durability
        self._connect_timeout = connect_timeout
        self._channel = channel
        self._max_batch_events = max_batch_events
        self._on_batch = on_batch
        self._on_committed = on_committed
        # Appends waiting for the writer, and their callers' futures, index by index.
        self._pending: list[AppendRequest] = []
        self._waiters: list[asyncio.Future[AppendResult]] = []
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._closing = False
        self.failure: EventStoreError | None = None
        """Why the last batch failed as a whole, until one commits (``write_failure``)."""
        self._task = self._loop.create_task(self._write_loop())

    @property
    def alive(self) -> bool:
        """Whether the writer task is running (it only ends on close, or by a bug)."""
        return not self._task.done()

    def submit(self, request: AppendRequest) -> asyncio.Future[AppendResult]:
        """Queue ``request``; the future gets its result once committed, or its error."""
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        self._pending.append(request)
        self._waiters.append(future)
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Commit what is pending, stop the task, close the connection."""
        self._closing = True
        self._wakeup.set()
        try:
            await self._task
        finally:
            if self._conn is not None:
                with contextlib.suppress(*DRIVER_ERRORS):
                    await self._conn.close(timeout=10)
                self._conn.terminate()

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, waiters = self._take_batch()
            started = time.perf_counter()
            try:
                outcomes = await self._commit(batch)
            except asyncio.CancelledError:
                for waiter in waiters:
                    waiter.cancel()
                raise
            if any(isinstance(outcome, AppendResult) for outcome in outcomes):
                self.failure = None
            elif isinstance(first := outcomes[0], StoreUnavailableError) and all(
                isinstance(outcome, StoreUnavailableError) for outcome in outcomes
            ):
                self.failure = first
            if self._on_batch is not None:
                self._on_batch(sum(len(r.events) for r in batch), time.perf_counter() - started)
            self._release(waiters, outcomes)

    def _take_batch(self) -> tuple[list[AppendRequest], list[asyncio.Future[AppendResult]]]:
        count = batch_size(self._pending, self._max_batch_events)
        batch, self._pending = self._pending[:count], self._pending[count:]
        waiters, self._waiters = self._waiters[:count], self._waiters[count:]
        return batch, waiters

    async def _commit(self, batch: list[AppendRequest]) -> list[Outcome]:
        """An outcome per append.

        If the batch transaction fails for a reason other than the server being away,
        its appends are retried one by one, so that an append the database refuses (a
        trigger, a name too long to index) fails alone.
        """
        try:
            return await self._commit_once(batch)
        except Exception as exc:
            error = as_store_error(exc)
            if len(batch) == 1 or isinstance(error, StoreUnavailableError):
                return [error] * len(batch)
        outcomes: list[Outcome] = []
        for request in batch:
            try:
                outcomes.extend(await self._commit_once([request]))
            except Exception as exc:
                outcomes.append(as_store_error(exc))
        return outcomes

    async def _commit_once(self, batch: list[AppendRequest]) -> list[Outcome]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect_writer(self._dsn, self._durability, self._connect_timeout)
        try:
            return await commit_batch(self._conn, batch, self._channel)
        except DRIVER_ERRORS as exc:
            if is_connection_lost(exc) or self._conn.is_closed():
                self._conn.terminate()
                self._conn = None
            raise

    def _release(
        self, waiters: list[asyncio.Future[AppendResult]], outcomes: list[Outcome]
    ) -> None:
        last = settle(waiters, outcomes)
        if last:
            self._on_committed(last)
