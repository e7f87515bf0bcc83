"""The projections in a child process of ``serve``: ``postback project --supervised``.

The serving process answers postbacks on one core; applying the projections (and sending
the outbox) in the same process competes with it for the interpreter's lock. By default
``serve`` therefore starts ``postback project`` as its child, on the same log, and keeps it
running:

* The child catches the projections up, follows the log, applies, and sends the outbox
  while it leads, exactly as a ``postback project`` run by hand.
* After each group commit the server writes a line to the child's stdin (the log grew:
  the child looks at once instead of at its next poll); after each transaction the child
  writes the position reached (and whether it leads) to its stdout, and the server's own
  runner, which only follows (``follow_only``), re-reads the checkpoints: reads that wait
  for fresh projections, ``/healthz`` (``leader`` is the child's) and the lag in
  ``/metrics`` work as with the projections in-process.
* Should the child die, it is started again (after 1 s, doubling up to 30 s while it
  keeps dying at once); its stderr is the server's. When the server stops, it closes the
  child's stdin and the child stops as on SIGTERM (at most ``_STOP_GRACE`` seconds, then
  it is killed); should the server itself be killed, the closed pipe stops the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator

from postback.config import Config
from projections.database import ProjectionDatabase

log = logging.getLogger("postback.projector")

_RESTART_FIRST = 1.0
_RESTART_MAX = 30.0
_STABLE_AFTER = 60.0  # a child that ran this long resets the restart delay
_STOP_GRACE = 15.0


def child_command(config: Config) -> list[str]:
    """``postback project --supervised`` on this configuration's log."""
    database = ["--dsn", config.dsn] if config.dsn is not None else ["--db", config.db_path]
    return [sys.executable, "-m", "postback", "project", "--supervised", *database]


class ChildProjector:
    """Keeps one ``postback project --supervised`` running; see the module docstring."""

    def __init__(self, config: Config, database: ProjectionDatabase) -> None:
        self._command = child_command(config)
        self._database = database
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
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        if process.stdin.transport.get_write_buffer_size() == 0:  # else one is on its way
            process.stdin.write(b"\n")

    async def run(self) -> None:
        """Start the child, and again whenever it dies, until :meth:`close`."""
        delay = _RESTART_FIRST
        while not self._closing:
            started = time.monotonic()
            code = await self._run_once()
            if self._closing:
                return
            if time.monotonic() - started > _STABLE_AFTER:
                delay = _RESTART_FIRST
            log.error("the projections process ended (%s); starting it in %.0f s", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX)

    async def _run_once(self) -> int | None:
        process = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Its own session: a Ctrl-C at the terminal goes to serve, which stops the
            # child itself (in order), instead of to both at once.
            start_new_session=True,
        )
        self._process = process
        self._starts += 1
        try:
            assert process.stdout is not None
            async for line in process.stdout:  # "POSITION LEADING" after each transaction
                self._leads = line.split()[-1:] == [b"1"]
                self._database.note_change()  # the follower re-reads the checkpoints
            return await process.wait()
        finally:
            self._leads = False
            if self._closing or process.returncode is not None:
                self._process = None

    async def close(self) -> None:
        """Stop the child: close its stdin, wait, then kill it if it does not stop."""
        self._closing = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), _STOP_GRACE)
        except TimeoutError:
            log.error("the projections process did not stop in %.0f s; killing it", _STOP_GRACE)
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def running(config: Config, database: ProjectionDatabase) -> AsyncIterator[ChildProjector]:
    """A :class:`ChildProjector` running for the duration."""
    child = ChildProjector(config, database)
    task = asyncio.get_running_loop().create_task(child.run())
    try:
        yield child
    finally:
        await child.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
