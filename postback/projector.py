"""The projections in a child process of ``serve``: ``postback project --supervised``.

The serving process answers postbacks on one core; applying the projections (and sending
the outbox) in the same process competes with it for the interpreter's lock. By default
``serve`` therefore starts ``postback project`` as its child, on the same log, and keeps it
running:

* The child catches the projections up, follows the log, applies, and sends the outbox
  while it leads, exactly as a ``postback project`` run by hand.
* After each group commit the server writes a line to the child's stdin (the log grew:
  the child looks at once instead of at its next poll), and a ``!`` line when a reader
  waits for the projections (the child applies without its live pause,
  ``POSTBACK_PROJECTION_INTERVAL``); after each transaction the child
  writes the position reached (and whether it leads) to its stdout, and the server's own
  runner, which only follows (``follow_only``), re-reads the checkpoints: reads that wait
  for fresh projections, ``/healthz`` (``leader`` is the child's) and the lag in
  ``/metrics`` work as with the projections in-process.
* Should the child die, it is started again (after 1 s, doubling up to 30 s while it
  keeps dying at once); its stderr is the server's. When the server stops, it closes the
  child's stdin and the child stops as on SIGTERM (its sends under way finish; after
  ``outbox_timeout`` + 20 seconds it is killed); should the server itself be killed, the
  closed pipe stops the child. A child that says nothing for 30 s (it reports at least
  every second) is taken for hung, killed and started again.
* The outbox's metrics (``postback_outbox_*``) are the child's: it sends them with each
  report (at least every second) and the server exports them in its ``/metrics`` in
  place of its own (empty) ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable

import orjson

from postback.config import Config
from postback.metrics import Families
from postback.tasks import reap
from projections.database import ProjectionDatabase

log = logging.getLogger("postback.projector")

_RESTART_FIRST = 1.0
_RESTART_MAX = 30.0
_STABLE_AFTER = 60.0  # a child that ran this long resets the restart delay
_LINE_LIMIT = 2**20  # bytes in one line from the child (its metrics are a few kB)
_HURRY_BUFFER_LIMIT = 2**16  # bytes waiting for the child beyond which no "!" is added
_SILENCE_LIMIT = 30.0
"""A child says where it is at least every second once it runs; one silent for this long
(hung: stopped, deadlocked) is killed and started again."""


def child_command(config: Config) -> list[str]:
    """``postback project --supervised`` on this configuration's log. ``-P``: the working
    directory is not put on ``sys.path`` (a stray ``postback.py`` there must not run)."""
    database = ["--dsn", config.dsn] if config.dsn is not None else ["--db", config.db_path]
    return [sys.executable, "-P", "-m", "postback", "project", "--supervised", *database]


class ChildProjector:
    """Keeps one ``postback project --supervised`` running; see the module docstring.

    The child takes its settings from the command line (the log) and the environment,
    as any ``postback`` command does: a :class:`Config` built in code reaches it only
    through ``db_path`` / ``dsn``.
    """

    def __init__(
        self,
        config: Config,
        database: ProjectionDatabase,
        command: list[str] | None = None,
        *,
        on_metrics: Callable[[Families], None] | None = None,
    ) -> None:
        self._command = command if command is not None else child_command(config)
        self._database = database
        self._on_metrics = on_metrics
        # The child's outbox may take outbox_timeout (+5 s) to finish its sends; then its
        # last batch and its connections close.
        self._stop_grace = config.outbox_timeout + 20.0
        self._process: asyncio.subprocess.Process | None = None
        self._closing = False
        self._starts = 0
        self._leads = False

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between two of them)."""
        return self._process.pid if self._process is not None else None

    @property
    def leads(self) -> bool:
        """Whether the child, as it last said, leads the projections (and sends)."""
        return self._leads and self._process is not None

    @property
    def starts(self) -> int:
        """How many times a child was started (1 unless one died)."""
        return self._starts

    def log_grew(self) -> None:
        """Tell the child the log has new events (called after each group commit)."""
        self._tell(b"\n", unless_waiting=1)  # one on its way says it already

    def hurry(self) -> None:
        """Tell the child a reader waits for the projections: apply now, without pausing."""
        # A child that reads nothing (hung, about to be killed) must not fill memory.
        self._tell(b"!\n", unless_waiting=_HURRY_BUFFER_LIMIT)

    def _tell(self, line: bytes, *, unless_waiting: int) -> None:
        """Write ``line`` to the running child's stdin, unless ``unless_waiting`` bytes or
        more are still waiting there to be read."""
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        if process.stdin.transport.get_write_buffer_size() < unless_waiting:
            process.stdin.write(line)

    async def run(self) -> None:
        """Start the child, and again whenever it dies or hangs, until :meth:`close`."""
        delay = _RESTART_FIRST
        while not self._closing:
            started = time.monotonic()
            try:
                ended = f"exit {await self._run_once()}"
            except Exception as exc:  # it could not start: no interpreter, no fork
                ended = f"could not start it: {exc!r}"
            if self._closing:
                return
            if time.monotonic() - started > _STABLE_AFTER:
                delay = _RESTART_FIRST
            log.error("the projections process ended (%s); starting it in %.0f s", ended, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX)

    async def _run_once(self) -> int:
        process = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
            # Its own session: a Ctrl-C at the terminal goes to serve, which stops the
            # child itself (in order), instead of to both at once.
            start_new_session=True,
        )
        self._process = process
        self._starts += 1
        try:
            await self._listen(process)
            return await process.wait()
        finally:
            self._leads = False
            if process.returncode is None:  # cancelled, or hung: it must not live on
                process.kill()
                await process.wait()
            self._process = None

    async def _listen(self, process: asyncio.subprocess.Process) -> None:
        """Read "POSITION LEADING" lines until the child's stdout ends (or it falls silent
        for ``_SILENCE_LIMIT`` seconds after its first line: then kill it)."""
        assert process.stdout is not None
        position: bytes | None = None
        while True:
            limit = None if position is None else _SILENCE_LIMIT
            try:
                line = await asyncio.wait_for(process.stdout.readline(), limit)
            except TimeoutError:
                log.error("the projections process said nothing for %.0f s; killing it", limit)
                process.kill()
                return
            if not line:
                return
            if line.startswith(b"M "):  # the child outbox's metrics
                if self._on_metrics is not None:
                    self._on_metrics(orjson.loads(line[2:]))
                continue
            fields = line.split()
            self._leads = fields[-1:] == [b"1"]
            if fields[:1] != [position]:
                position = fields[0] if fields else b""
                self._database.note_change()  # the follower re-reads the checkpoints

    async def close(self) -> None:
        """Stop the child: close its stdin, wait, then kill it if it does not stop."""
        self._closing = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), self._stop_grace)
        except TimeoutError:
            log.error(
                "the projections process did not stop in %.0f s; killing it", self._stop_grace
            )
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def running(
    config: Config,
    database: ProjectionDatabase,
    on_metrics: Callable[[Families], None] | None = None,
) -> AsyncIterator[ChildProjector]:
    """A :class:`ChildProjector` running for the duration."""
    child = ChildProjector(config, database, on_metrics=on_metrics)
    task = asyncio.get_running_loop().create_task(child.run())
    try:
        yield child
    finally:
        await child.close()
        await reap(task, log, "the supervision of the projections process had failed")
