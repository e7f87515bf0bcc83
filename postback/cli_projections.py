"""``postback rebuild``, ``postback verify`` and ``postback project``: projections from the CLI.

All three use :func:`projections.catalog.all_projections`, so a projection added to the
catalogue is rebuilt, verified and followed with no change here. Progress goes to stderr,
results to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, cast

from eventstore.base import RecordedEvent, VerifyReport
from eventstore.sqlite import SQLiteEventStore
from postback.config import Config
from postback.signals import stop_on_signals
from projections.catalog import all_projections
from projections.runner import ProjectionRunner, projections_path
from projections.verify import DEFAULT_LIMIT, compare_projections, format_report

ProgressFn = Callable[[int, int], None]
"""``(position applied up to, last position of the log as last seen)``."""


class LogView:
    """The log as a :class:`ProjectionRunner` sees it: ``store``, cut at ``until`` (when
    given) and reporting each read (the runner reads the next batch right after committing
    the previous one, so ``after`` is the position applied up to).

    It has the four members the runner uses (``path``, ``last_position``, ``read_all``,
    ``wait_for_events``); :meth:`as_store` hands it to the runner.
    """

    def __init__(
        self,
        store: SQLiteEventStore,
        *,
        until: int | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self._store = store
        self._until = until
        self._on_progress = on_progress
        self.head = 0

    def as_store(self) -> SQLiteEventStore:
        return cast(SQLiteEventStore, self)

    def __getattr__(self, name: str) -> Any:
        # Anything else the runner may come to use: the store's own.
        return getattr(self._store, name)

    @property
    def path(self) -> str:
        return self._store.path

    def _cut(self, position: int) -> int:
        return position if self._until is None else min(position, self._until)

    def _seen(self, position: int) -> int:
        self.head = max(self.head, self._cut(position))
        return self._cut(position)

    async def last_position(self) -> int:
        return self._seen(await self._store.last_position())

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        if self._on_progress is not None:
            self._on_progress(after, max(self.head, after))
        if self._until is not None:
            limit = min(limit, self._until - after)
            if limit <= 0:
                return []
        batch = await self._store.read_all(after, limit)
        if self._until is not None:
            batch = [event for event in batch if event.position <= self._until]
        if batch:
            self._seen(batch[-1].position)
        return batch

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

    def finish(self, position: int, total: int) -> None:
        if not self.tty and self.shown == position and position > self.start:
            return  # that line is already out
        self.shown = position
        end = "\x1b[K\n" if self.tty else "\n"
        self.stream.write(("\r" if self.tty else "") + self.line(position, total) + end)
        self.stream.flush()
        self.open_line = False


def _fail(message: str, code: int) -> int:
    print(f"postback: {message}", file=sys.stderr)
    return code


def _missing_log(config: Config) -> str | None:
    if not os.path.exists(config.db_path):
        return f"no log at {config.db_path} (give --db or POSTBACK_DB)"
    return None


# -- rebuild ----------------------------------------------------------------------------------


async def _rebuild(config: Config, names: Sequence[str] | None, batch_size: int) -> int:
    store = await SQLiteEventStore.open(config.db_path, poll_interval=None)
    try:
        total = await store.last_position()
        bar = ProgressBar("rebuild")
        view = LogView(store, on_progress=lambda position, _head: bar.update(position, total))
        runner = ProjectionRunner(view.as_store(), all_projections(), batch_size=batch_size)
        try:
            started = time.perf_counter()
            position = await runner.rebuild(names)
            seconds = time.perf_counter() - started
            bar.finish(position, max(total, position))
            rebuilt = list(names) if names else [p.name for p in all_projections()]
            rate = position / max(seconds, 1e-9)
            print(
                f"rebuilt {', '.join(rebuilt)} from {position:,} events in {seconds:.2f} s"
                f" ({rate:,.0f} events/s) into {projections_path(config.db_path)}"
            )
        finally:
            await runner.close()
    finally:
        await store.close()
    return 0


def rebuild(config: Config, names: Sequence[str], batch_size: int) -> int:
    known = [projection.name for projection in all_projections()]
    unknown = [name for name in names if name not in known]
    if unknown:
        return _fail(f"unknown projection {', '.join(unknown)}; known: {', '.join(known)}", 2)
    if (missing := _missing_log(config)) is not None:
        return _fail(missing, 2)
    return asyncio.run(_rebuild(config, list(dict.fromkeys(names)) or None, batch_size))


# -- verify -----------------------------------------------------------------------------------


async def _check_log(config: Config, anchor: tuple[int, bytes] | None) -> VerifyReport:
    """The log's tamper evidence; then the live projections caught up with the log."""
    store = await SQLiteEventStore.open(config.db_path, poll_interval=None)
    try:
        report = await store.verify(anchor)
        runner = ProjectionRunner(store, all_projections())
        try:
            await runner.catch_up()
        finally:
            await runner.close()
    finally:
        await store.close()
    return report


async def _replay(config: Config, path: str, until: int) -> int:
    """Every projection from position 0 to ``until`` into the file ``path``."""
    store = await SQLiteEventStore.open(config.db_path, poll_interval=None)
    try:
        view = LogView(store, until=until)
        runner = ProjectionRunner(view.as_store(), all_projections(), path=path)
        try:
            return await runner.catch_up()
        finally:
            await runner.close()
    finally:
        await store.close()


def _print_log_report(report: VerifyReport) -> None:
    if report.finding is None:
        head = f"{report.head_position}:{report.head_hash.hex()}"
        print(f"log: ok, {report.checked:,} events, hash chain intact")
        print(f"log: head position {report.head_position}, hash {report.head_hash.hex()}")
        print(f"log: keep it as an anchor for later checks: --anchor {head}")
    else:
        finding = report.finding
        print(f"log: TAMPERED at position {finding.position}: {finding.kind.value}")
        print(f"log: {finding.detail}")


def _read_only(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA query_only = 1")
    return conn


def verify(config: Config, anchor: tuple[int, bytes] | None, limit: int = DEFAULT_LIMIT) -> int:
    """Print the report; 0 when the log and every projection check out, 1 otherwise."""
    if (missing := _missing_log(config)) is not None:
        return _fail(missing, 2)
    report = asyncio.run(_check_log(config, anchor))
    _print_log_report(report)
    projections = all_projections()
    live = _read_only(projections_path(config.db_path))
    try:
        # One snapshot of the live projections: a runner elsewhere (serve, project) may
        # keep applying; we compare what this snapshot holds, at its checkpoint.
        live.execute("BEGIN")
        stored = dict(live.execute("SELECT name, position FROM projection_checkpoints"))
        position = min(int(stored.get(p.name, 0)) for p in projections)
        with tempfile.TemporaryDirectory(prefix="postback-verify-") as tmp:
            fresh_path = os.path.join(tmp, "replay.projections.db")
            replayed = asyncio.run(_replay(config, fresh_path, position))
            fresh = _read_only(fresh_path)
            try:
                fresh.execute("BEGIN")
                diffs = compare_projections(live, fresh, projections, limit)
                fresh.execute("COMMIT")
            finally:
                fresh.close()
        live.execute("COMMIT")
    finally:
        live.close()
    ok = all(diff.ok for diff in diffs)
    print(f"projections: compared with a fresh replay of positions 1..{position:,}")
    if replayed != position:
        print(f"projections: the replay reached only position {replayed:,} of the log")
    for line in format_report(diffs):
        print(line)
    bad = [diff.name for diff in diffs if not diff.ok]
    if report.ok and ok and replayed == position:
        print("verify: OK")
        return 0
    problems = []
    if report.finding is not None:
        problems.append(f"log tampered at position {report.finding.position}")
    if bad:
        problems.append(f"projections differ: {', '.join(bad)}")
    if replayed != position:
        problems.append(f"projections are ahead of the log ({position:,} > {replayed:,})")
    print(f"verify: FAILED ({'; '.join(problems)})")
    return 1


def parse_anchor(text: str) -> tuple[int, bytes]:
    """``POSITION:HEXHASH`` -> ``(position, hash)``; ValueError otherwise."""
    position, sep, digest = text.partition(":")
    try:
        if not sep:
            raise ValueError
        anchor = (int(position), bytes.fromhex(digest))
    except ValueError:
        raise ValueError(f"an anchor is POSITION:HEXHASH, got {text!r}") from None
    if anchor[0] < 0 or not anchor[1]:
        raise ValueError(f"an anchor is POSITION:HEXHASH, got {text!r}")
    return anchor


# -- project ----------------------------------------------------------------------------------


async def _project(config: Config, batch_size: int) -> int:
    store = await SQLiteEventStore.open(
        config.db_path, durability="normal" if config.durability == "normal" else "full"
    )
    bar: ProgressBar | None = None
    announced = -1

    def progress(position: int, head: int) -> None:
        nonlocal bar, announced
        if bar is None:
            bar = ProgressBar("project", start=position)
        if position >= head and position != announced:
            announced = position
            bar.finish(position, head)
            print(
                f"postback: projections caught up at position {position:,}; following the log",
                file=sys.stderr,
                flush=True,
            )
            bar = ProgressBar("project", start=position)
        else:
            bar.update(position, head)

    view = LogView(store, on_progress=progress)
    runner = ProjectionRunner(view.as_store(), all_projections(), batch_size=batch_size)
    print(
        f"postback: projecting {config.db_path} into {projections_path(config.db_path)}"
        f" (pid {os.getpid()}); stop with SIGINT or SIGTERM",
        file=sys.stderr,
        flush=True,
    )
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    task = loop.create_task(runner.run())
    stopping = loop.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        runner.stop()
        await task  # raises what ended run(), if anything did
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        position = runner.position
        await runner.close()
        await store.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print(f"postback: projections stopped at position {position:,}", file=sys.stderr)
    return 0


def project(config: Config, batch_size: int) -> int:
    return asyncio.run(_project(config, batch_size))
