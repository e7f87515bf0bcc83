"""Waking waiters on appends made by other processes: one LISTENing connection per store.

Every transaction that adds events sends ``NOTIFY <channel>, '<new last position>'``
(:mod:`eventstore.postgres_batch`); PostgreSQL delivers it when, and only if, that
transaction commits, in commit order. Each store keeps one dedicated connection that
LISTENs on its schema's channel and reports every notified position.

When that connection is lost, it reconnects (with a growing delay); after every LISTEN it
reads the head once, so appends committed while it was away are not missed.

A connection can also die silently: a NAT or a load balancer that drops idle TCP
connections (after four or five minutes on the big clouds) sends nothing, and the
listener would wait for notifications that never come. So every ``PROBE_INTERVAL``
seconds it reads the head on that connection: the answer is delivered like a
notification (covering any that was lost), the traffic keeps the connection from looking
idle, and a probe unanswered within ``PROBE_TIMEOUT`` (or failing) drops the connection
and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable

from eventstore.postgres_driver import DRIVER_ERRORS, Connection, translated

_MAX_IDENTIFIER = 63  # bytes; PostgreSQL's NAMEDATALEN - 1
_FIRST_RETRY = 0.05
_MAX_RETRY = 2.0
PROBE_INTERVAL = 30.0
"""Seconds between two reads of the head on the listening connection."""
PROBE_TIMEOUT = 10.0
"""Seconds a probe may take before the connection is taken for dead."""
_HEAD = "SELECT position FROM chain_head"
_PROBE_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, *DRIVER_ERRORS)


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the log in ``schema`` (a PostgreSQL identifier, <= 63 bytes)."""
    channel = f"eventstore.{schema}"
    if len(channel.encode()) > _MAX_IDENTIFIER:
        channel = "eventstore." + hashlib.sha256(schema.encode()).hexdigest()[:40]
    return channel


class Listener:
    """A connection LISTENing on ``channel``; calls ``on_position`` with each position.

    ``connect()`` opens a new connection to the store's database (and schema).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Connection]],
        channel: str,
        on_position: Callable[[int], None],
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._on_position = on_position
        self._conn: Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def channel(self) -> str:
        return self._channel

    async def start(self) -> None:
        """Listen (raising the store's error if the first connection fails), then keep at it."""
        await self._listen()
        self._task = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _listen(self) -> None:
        conn = await self._connect()
        lost = asyncio.Event()
        try:
            with translated():
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(self._channel, self._notified)
                # Read after LISTEN: whatever commits later is notified, nothing falls between.
                position = await conn.fetchval(_HEAD)
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._lost = conn, lost
        self._on_position(int(position))

    def _notified(self, _conn: Connection, _pid: int, _channel: str, payload: str) -> None:
        try:
            position = int(payload)
        except ValueError:
            return  # not ours (someone else NOTIFYing on the channel)
        self._on_position(position)

    async def _reconnect_loop(self) -> None:
        while True:
            await self._until_lost()
            delay = _FIRST_RETRY
            while True:
                try:
                    await self._listen()
                    break
                except Exception:  # the store's errors or a driver's: the server is away
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_RETRY)

    async def _until_lost(self) -> None:
        """Return once the connection is lost, probing it every ``PROBE_INTERVAL``."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), PROBE_INTERVAL)
                return
            except TimeoutError:
                pass
            conn = self._conn
            assert conn is not None
            try:
                position = await asyncio.wait_for(conn.fetchval(_HEAD), PROBE_TIMEOUT)
            except _PROBE_FAILURES:
                conn.terminate()  # silent, or broken: a new connection
                return
            self._on_position(int(position))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                await self._conn.close(timeout=5)
            self._conn.terminate()
