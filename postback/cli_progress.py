"""What the long CLI commands share: a view of the log for their projection runners, a
progress bar on stderr, and what to do with a standard output that broke.

:class:`LogView` wraps any :class:`~eventstore.base.EventStore` (SQLite or PostgreSQL), so
``rebuild``, ``verify``, ``project`` and ``migrate-to`` work the same on both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Collection
from typing import Any, TextIO, cast

from eventstore.base import EventStore, RecordedEvent

ProgressFn = Callable[[int, int], None]
"""``(position applied up to, last position of the log as last seen)``."""
HeadFn = Callable[[int], None]
"""``(last position of the log)``: called each time the runner asks for it."""


def silence_stdout() -> None:
    """Point standard output at /dev/null, so that nothing more is tried on a broken one
    (Python flushes it at exit, and would complain)."""
    if sys.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class LogView:
    """The log as a :class:`~projections.runner.ProjectionRunner` sees it: ``store`` (any
    backend), cut at ``until`` (when given) and reporting each read (the runner reads the
    next batch right after committing the previous one, so ``after`` is the position
    applied up to) and each look at the head (``on_head``: a following runner on PostgreSQL
    looks at it each time the leader moves, without reading).

    It has the members the runner and its readers use (``last_position``, ``read_all``,
    ``read_at``, ``wait_for_events``), all cut at ``until``; anything else (an SQLite
    log's ``path``, where its projections default to) is the store's own.
    :meth:`as_store` hands it to the runner.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        until: int | None = None,
        on_progress: ProgressFn | None = None,
        on_head: HeadFn | None = None,
    ) -> None:
        self._store = store
        self._until = until
        self._on_progress = on_progress
        self._on_head = on_head
        self.head = 0

    def as_store(self) -> EventStore:
        """This view, typed as what the runner takes (it uses only the members above)."""
        return cast(EventStore, self)

    def __getattr__(self, name: str) -> Any:
        # Anything else the runner may come to use: the store's own.
        return getattr(self._store, name)

    def _cut(self, position: int) -> int:
        return position if self._until is None else min(position, self._until)

    def _seen(self, position: int) -> int:
        self.head = max(self.head, self._cut(position))
        return self._cut(position)

    async def last_position(self) -> int:
        position = self._seen(await self._store.last_position())
        if self._on_head is not None:
            self._on_head(position)
        return position

    async def read_all(
        self, after: int = 0, limit: int = 1000, *, leave_out: Collection[str] = ()
    ) -> list[RecordedEvent]:
        if self._on_progress is not None:
            self._on_progress(after, max(self.head, after))
        if self._until is not None:
            limit = min(limit, self._until - after)
            if limit <= 0:
                return []
        batch = await self._store.read_all(after, limit, leave_out=leave_out)
        if self._until is not None and batch and batch[-1].position > self._until:
            # The log's positions may have gaps (PostgreSQL): what lies past ``until``.
            batch = [event for event in batch if event.position <= self._until]
        if batch:
            self._seen(batch[-1].position)
        return batch

    async def read_at(self, positions: Collection[int]) -> list[RecordedEvent]:
        events = await self._store.read_at(positions)
        if self._until is None:
            return events
        return [event for event in events if event.position <= self._until]

    async def wait_for_events(self, after: int, timeout: float | None = None) -> int:
        # The runner waits here once it has applied everything up to ``after``.
        if self._on_progress is not None:
            self._on_progress(after, max(self.head, after))
        if self._until is not None and after >= self._until:
            await asyncio.sleep(timeout or 0)
            return self._until
        return self._seen(await self._store.wait_for_events(after, timeout))


class ProgressBar:
    """A one-line text progress bar on stderr: ``[####----] position/total  rate events/s``.

    On a terminal it redraws the line per batch; otherwise (a pipe, a log file) it writes a
    line for the first batch, then at most one every ``interval`` seconds, and at the end.
    """

    WIDTH = 30

    def __init__(
        self, label: str, start: int = 0, stream: TextIO | None = None, interval: float = 1.0
    ) -> None:
        self.label = label
        self.start = start
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.started = time.perf_counter()
        self.shown = start
        self.last_line = 0.0
        self.open_line = False

    def rate(self, position: int) -> float:
        return (position - self.start) / max(time.perf_counter() - self.started, 1e-9)

    def line(self, position: int, total: int) -> str:
        total = max(total, position, 1)
        done = min(self.WIDTH, self.WIDTH * position // total)
        percent = 100 * position // total
        return (
            f"{self.label} [{'#' * done}{'-' * (self.WIDTH - done)}] {position:,}/{total:,}"
            f" ({percent}%) {self.rate(position):,.0f} events/s"
        )

    def update(self, position: int, total: int) -> None:
        if position <= self.shown:
            return
        now = time.perf_counter()
        first = self.shown == self.start
        if not self.tty and not first and now - self.last_line < self.interval:
            return
        self.shown, self.last_line = position, now
        if self.tty:
            self.stream.write("\r" + self.line(position, total) + "\x1b[K")
            self.open_line = True
        else:
            self.stream.write(self.line(position, total) + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        """End a line the bar left open on a terminal (before printing something else)."""
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False

    def finish(self, position: int, total: int) -> None:
        if not self.tty and self.shown == position and position > self.start:
            return  # that line is already out
        self.shown = position
        end = "\x1b[K\n" if self.tty else "\n"
        self.stream.write(("\r" if self.tty else "") + self.line(position, total) + end)
        self.stream.flush()
        self.open_line = False
