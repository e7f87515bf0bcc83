"""``postback project``: the projection runner from the CLI, on either backend.

It uses :func:`postback.backend.projection_runner`, so the projections go where ``serve``
keeps them (beside an SQLite log, or in the PostgreSQL schema of the log) and a projection
added to the catalogue is followed with no change here. ``project`` also runs the outbox
beside its runner, as ``serve`` does (unless ``POSTBACK_OUTBOX=off``), so
``serve --no-projections`` plus ``project`` still sends. ``postback rebuild`` is in
:mod:`postback.cli_rebuild`, ``postback verify`` in :mod:`postback.cli_verify`. Progress
goes to stderr, results to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

import orjson

from eventstore.base import EventStore
from eventstore.errors import EventStoreError
from postback.backend import describe, open_store, projection_runner
from postback.cli_progress import LogView, ProgressBar
from postback.config import Config
from postback.metrics import Metrics
from postback.outbox import Outbox, sending
from postback.signals import stop_on_signals
from projections.runner import ProjectionRunner


def _say(message: str) -> None:
    print(f"postback: {message}", file=sys.stderr, flush=True)


# -- project ----------------------------------------------------------------------------------


class _Narrator:
    """What ``project`` says on stderr: a progress bar while it applies, a line each time it
    has caught up, and (PostgreSQL) when it follows another runner or takes over from one."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.runner: ProjectionRunner | None = None
        self.bar: ProgressBar | None = None
        self.announced = -1
        self.following = False
        self.quiet = quiet  # no progress bar nor "caught up" lines (under serve)

    def head(self, _head: int) -> None:
        """The runner looked at the log's head: is it leading or following now?"""
        if self.runner is None:
            return
        leading = self.runner.is_leader
        if not leading and not self.following:
            self.following = True
            _say(
                f"another runner leads these projections (a serve, or another project);"
                f" following its checkpoints at position {self.runner.position:,}"
                " until it stops, then taking over"
            )
        elif leading and self.following:
            self.following = False
            self.bar = None
            _say(f"now leading the projections, from position {self.runner.position:,}")

    def progress(self, position: int, head: int) -> None:
        """The runner applied up to ``position``; the log's head is ``head``."""
        if self.quiet:
            return
        if self.bar is None:
            self.bar = ProgressBar("project", start=position)
        if position >= head and position != self.announced:
            self.announced = position
            self.bar.finish(position, head)
            _say(f"projections caught up at position {position:,}; following the log")
            self.bar = ProgressBar("project", start=position)
        else:
            self.bar.update(position, head)


@contextlib.asynccontextmanager
async def _sending(
    store: EventStore, runner: ProjectionRunner, config: Config, metrics: Metrics
) -> AsyncIterator[None]:
    """Run an outbox beside ``runner`` (as :func:`postback.outbox.running` does in
    ``serve``) while leading, unless ``POSTBACK_OUTBOX=off``; on leaving, close it
    gracefully (sends under way finish and are recorded) while the runner still runs."""
    if not config.outbox:
        _say("the outbox is off (POSTBACK_OUTBOX=off): nothing is sent from this process")
        yield
        return
    # No /metrics here: under serve, _report_positions relays them to serve's /metrics.
    outbox = Outbox(store, runner, config, metrics=metrics, is_leader=lambda: runner.is_leader)
    _say("sending the outbox (Facebook, Telegram, webhooks) while leading")
    async with sending(outbox):
        yield


_REPORT_EVERY = 1.0
"""Under ``serve``, the child reports at least this often (seconds), changed or not."""


async def _report_positions(
    runner: ProjectionRunner, metrics: Metrics, stop: asyncio.Event
) -> None:
    """Under ``serve``: write each position the projections reach, and whether this
    process leads them, to stdout (``"POSITION LEADING"``, LEADING 1 or 0), so the serving
    process wakes its readers at once (it reads the checkpoints) and its ``/healthz`` can
    tell which instance leads. At least every ``_REPORT_EVERY`` seconds too, changed or
    not: leadership can change without a new position, and the silence of a hung child
    is how the serving process tells it is hung. The outbox's metrics go along, on a line
    of their own (``M`` and JSON), for serve's ``/metrics``: at most every
    ``_REPORT_EVERY`` seconds, not with each of the many positions of a busy log."""
    loop = asyncio.get_running_loop()
    metrics_due = loop.time()
    while True:
        position = runner.position
        try:
            sys.stdout.write(f"{position} {int(runner.is_leader)}\n")
            if loop.time() >= metrics_due:
                sys.stdout.write(f"M {orjson.dumps(metrics.outbox_families()).decode()}\n")
                metrics_due = loop.time() + _REPORT_EVERY
            sys.stdout.flush()
        except BrokenPipeError:
            stop.set()  # the serving process is gone
            return
        # Not asyncio.wait_for: on 3.11 it swallows a cancellation that comes as the wait
        # ends (the runner's last transaction on stopping), and this loop would go on.
        moved = asyncio.ensure_future(runner.wait_until(position + 1, urgent=False))
        try:
            await asyncio.wait({moved}, timeout=_REPORT_EVERY)
        finally:
            moved.cancel()
        if moved.done() and not moved.cancelled():
            moved.result()  # the runner failed or closed: this ends too


async def _watch_parent(store: EventStore, runner: ProjectionRunner, stop: asyncio.Event) -> None:
    """Under ``serve``: each line on stdin says the log grew (look now, not at the next
    poll), a ``!`` that a reader waits for the projections (apply now, without the
    runner's live pause); the end of stdin says the serving process is gone (stop, as on
    SIGTERM)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while words := await reader.read(4096):
            if b"!" in words:
                runner.hurry()
            try:
                await store.last_position()
            except EventStoreError as exc:  # the runner's own poll will look again
                _say(f"could not look at the log's head: {exc}")
    finally:
        transport.close()
        stop.set()


async def _project(config: Config, batch_size: int, *, supervised: bool = False) -> int:
    store = await open_store(config)
    narrator = _Narrator(quiet=supervised)
    metrics = Metrics()
    view = LogView(store, on_progress=narrator.progress, on_head=narrator.head)
    runner = projection_runner(view.as_store(), config, batch_size=batch_size)
    narrator.runner = runner
    loop = asyncio.get_running_loop()
    stop = stop_on_signals()
    try:
        await runner.open()
        print(
            f"postback: projecting {describe(config)} into {runner.database.describe()}"
            f" (pid {os.getpid()}); stop with SIGINT or SIGTERM",
            file=sys.stderr,
            flush=True,
        )
        task = loop.create_task(runner.run())
        stopping = loop.create_task(stop.wait())
        helpers = (
            [
                loop.create_task(_report_positions(runner, metrics, stop)),
                loop.create_task(_watch_parent(store, runner, stop)),
            ]
            if supervised
            else []
        )
        try:
            async with _sending(store, runner, config, metrics):
                await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            runner.stop()
            await task  # raises what ended run(), if anything did
        finally:
            for waiting in (stopping, *helpers):
                waiting.cancel()
            await asyncio.gather(stopping, *helpers, return_exceptions=True)
    finally:
        position = runner.position
        await runner.close()
        await store.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print(f"postback: projections stopped at position {position:,}", file=sys.stderr)
    return 0


def project(config: Config, batch_size: int, *, supervised: bool = False) -> int:
    """Catch the projections up, then follow the log until SIGINT or SIGTERM (exit 0).

    ``supervised`` (``--supervised``, how ``serve`` runs it: :mod:`postback.projector`):
    no progress output; the positions reached go to stdout; a line on stdin means the log
    grew; the end of stdin means stop."""
    return asyncio.run(_project(config, batch_size, supervised=supervised))
