"""Projections: read models folded from the log, in SQLite beside it or in PostgreSQL.

A :class:`Projection` turns batches of :class:`~eventstore.base.RecordedEvent` into rows.
A :class:`ProjectionRunner` feeds it the log in order and records, per projection, the
position it has applied up to (its *checkpoint*, in ``projection_checkpoints``). Where the
rows live is a :class:`~projections.database.ProjectionDatabase`: by default an SQLite file
of their own beside the log, or ``database=PostgresProjectionDatabase(dsn)``.

* Rows and checkpoint commit in the **same** transaction, so a crash never skips an event
  nor applies one twice: after a restart the runner resumes from the checkpoint, and
  everything after it was rolled back.
* The checkpoint is read *inside* that transaction, and the writers of one database take
  turns (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level advisory lock): several
  runners never apply an event twice either; whoever commits first wins, the others skip.
* **One active runner** on PostgreSQL: of the runners whose :meth:`~ProjectionRunner.run`
  shares a schema and a set of projections, only the holder of an advisory lock applies
  (the *leader*); the others follow the shared checkpoints (NOTIFY, and a periodic
  re-read) and take over when its session ends. On SQLite every runner applies, and
  the one holding a file lock is the leader (:attr:`~ProjectionRunner.is_leader`): the one
  whose process sends the outbox's deliveries.
  :meth:`~ProjectionRunner.catch_up` and :meth:`~ProjectionRunner.rebuild` apply whoever
  calls them (safe by the two rules above).
* Following a busy log live, a runner with a ``live_interval`` applies at most that
  often: the events that arrive meanwhile go in one transaction, which writes each page
  they touch once instead of once per group commit (the cost of a live projection is
  mostly those pages). The pause follows a transaction of at least :data:`BUSY_BATCH`
  events that came while the runner was not pausing (what gathers during a pause says
  nothing of the load); a quieter log's events are applied as they come (the outbox
  sends a Contact within milliseconds), and so is the first event after a quiet moment.
  A reader that must see events not applied yet (:meth:`~ProjectionRunner.wait_until`,
  ``urgent`` by default) or :meth:`~ProjectionRunner.hurry` cuts the pause short;
  catching up never pauses; a runner stopped while following applies what the log holds
  (one batch) before it returns.
* A runner made with ``follow_only=True`` never applies in :meth:`~ProjectionRunner.run`,
  on either backend: it only follows the checkpoints that another process commits (the
  ``postback serve`` whose projections run in a child ``postback project``), so that
  :meth:`~ProjectionRunner.wait_until`, :attr:`~ProjectionRunner.position` and
  :attr:`~ProjectionRunner.lag` still tell how far the projections are. On SQLite that
  process's word (:meth:`~projections.database.ProjectionDatabase.note_change`) wakes it.
* Projection code is synchronous and runs in a worker thread, never on the event loop; its
  SQL is portable (the rule is in :mod:`projections.database`: ``?``, ``BIGINT``, upserts
  with ``ON CONFLICT``, no PRAGMA or ``json_each``).
* A projection's tables have no migrations: to change a schema, change the projection's
  ``name`` (a new checkpoint, built from position 0) or call :meth:`ProjectionRunner.rebuild`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from typing import Protocol, TypeVar

from eventstore.base import EventStore, RecordedEvent
from eventstore.errors import StoreUnavailableError
from eventstore.reading import LEAVABLE
from projections import checkpoints
from projections.database import ProjectionDatabase, SqlConnection, SQLiteProjectionDatabase

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_BATCH = 10
"""A live transaction of this many events or more, that came while the runner was not
pausing, says the log is busy: with a ``live_interval``, the runner pauses after it. Under
``bench/load.py``'s 5,000 postbacks/s about 25 events come while a transaction applies;
at a few hundred events per second, one or two."""

_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0


class Projection(Protocol):
    """A read model. Its methods run in the runner's worker thread, inside its transaction.

    They must only use the connection they are given (no commit, no BEGIN, no asyncio),
    write portable SQL (:mod:`projections.database`), and be deterministic: applying a log
    in any split of batches gives the same rows.
    """

    @property
    def name(self) -> str:
        """Unique among the runner's projections; the key of its checkpoint."""

    @property
    def schema_sql(self) -> Sequence[str]:
        """``CREATE TABLE/INDEX IF NOT EXISTS`` statements, run when the runner opens.

        A projection may also have ``read_indexes``: ``CREATE INDEX IF NOT EXISTS``
        statements for indexes that only its readers use, never ``apply_batch``. They are
        created with the tables, except by :meth:`ProjectionRunner.rebuild`, which
        creates them once it has caught up (building an index over the finished table is
        cheaper than keeping it up to date row by row).

        It may also have ``rebuild_weight``: its rebuild's relative cost (a positive
        number, 1.0 if absent), by which ``postback rebuild`` balances the projections
        over its processes (:func:`projections.shadow.plan_shards`).

        And ``reads_event_fields``: which of the events' ``stream``, ``metadata`` and
        ``hash`` its folds read (all three if absent). The runner asks the log to leave
        out those that none of its projections read (:mod:`eventstore.reading`).

        And it may have a cheaper fold for a one-pass rebuild into a shadow
        (:meth:`ProjectionRunner.rebuild` with ``one_pass``): ``one_pass()`` returns a
        fresh :class:`OnePassFold` for that one rebuild, which folds every batch instead
        of :meth:`apply_batch` and finishes the rows at the end.
        """

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        """Fold ``events`` (consecutive, in position order, all after the checkpoint)."""

    def reset(self, conn: SqlConnection) -> None:
        """Remove every row (or drop the tables: ``schema_sql`` is run again afterwards)."""


class OnePassFold(Protocol):
    """A projection's fold for one one-pass rebuild (``Projection.one_pass()``).

    The runner calls :meth:`apply_batch` for each batch of the log in order, in the
    batch's transaction, then :meth:`finish` once, in the transaction after the last
    batch. The fold may keep state in memory from one batch to the next, and may leave
    out rows (or indexes) that :meth:`finish` derives: nobody reads the database before
    the rebuild returns, and it is thrown away should the rebuild fail. After
    :meth:`finish` the rows must be those the projection's ``apply_batch`` gives
    (``postback verify``, whose replay children rebuild in one pass, compares them with
    the live ones).
    """

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        """Fold ``events`` (consecutive, in position order, after the previous batch)."""

    def finish(self, conn: SqlConnection) -> None:
        """Complete the rows, once, after the last batch."""


def fields_left_out(projections: Sequence[Projection]) -> frozenset[str]:
    """The fields of :data:`~eventstore.reading.LEAVABLE` that none of ``projections``
    reads (by their ``reads_event_fields``; one without it reads them all)."""
    read: set[str] = set()
    for projection in projections:
        fields: Collection[str] | None = getattr(projection, "reads_event_fields", None)
        if fields is None:
            return frozenset()
        read.update(fields)
    return LEAVABLE - read


class ProjectionStoppedError(RuntimeError):
    """:meth:`ProjectionRunner.wait_until` cannot finish: the runner closed or failed."""


def projections_path(log_path: str) -> str:
    """Where projections live by default: beside the log, ``x.db`` -> ``x.projections.db``.

    A file of their own: their writes never wait for (or hold up) the log's single
    writer, and they can be deleted and rebuilt from the log at any time.
    """
    root, ext = os.path.splitext(log_path)
    return f"{root}.projections{ext or '.db'}"


def _default_database(store: EventStore, path: str | os.PathLike[str] | None) -> ProjectionDatabase:
    if path is None:
        # An SQLite log (or a view of one, as the CLI's) names its file; any other needs
        # path= or database=.
        log_path = getattr(store, "path", None)
        if not isinstance(log_path, str):
            raise ValueError("give path= or database=: the log is not an SQLite file")
        if log_path in ("", ":memory:") or log_path.startswith("file::memory:"):
            raise ValueError("projections need the log in a file, not in memory")
        path = projections_path(log_path)
    return SQLiteProjectionDatabase(path)


class ProjectionRunner:
    """Keeps ``projections`` up to date with the log of ``store``.

    The rows go to ``database``, by default an SQLite file beside the log (``path`` to
    choose another file). Connections are opened on first use (or by :meth:`open`); call
    :meth:`close` at the end, before closing the store. Typical use::

        runner = ProjectionRunner(store, [PostbackLogProjection()])
        task = asyncio.create_task(runner.run())
        ...
        await runner.wait_until(result.last_position)   # read your own writes
        rows = await runner.query(lambda conn: query_stats(conn, ...))
        await runner.close()                           # stops run() too
    """

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        batch_size: int = 5000,
        idle_timeout: float = 5.0,
        path: str | os.PathLike[str] | None = None,
        database: ProjectionDatabase | None = None,
        follow_only: bool = False,
        live_interval: float = 0.0,
    ) -> None:
        names = [projection.name for projection in projections]
        if not names:
            raise ValueError("a projection runner needs at least one projection")
        if len(set(names)) != len(names):
            raise ValueError(f"projection names must be unique: {names}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not live_interval >= 0:
            raise ValueError("live_interval must be at least 0")
        if database is not None and path is not None:
            raise ValueError("give path= (an SQLite file) or database=, not both")
        self._store = store
        self._database = database if database is not None else _default_database(store, path)
        self._projections = tuple(projections)
        self._left_out = fields_left_out(projections)
        self._names = tuple(names)
        self._batch_size = batch_size
        self._idle_timeout = idle_timeout
        self._follow_only = follow_only
        self._live_interval = live_interval
        self._hurried = False  # hurry() since the last read of the log
        self._wake = asyncio.Event()  # the pause has something to look at again
        self._urgent_targets: dict[int, int] = {}  # position -> urgent waiters for it
        self.on_behind: Callable[[], None] | None = None
        """Called when an urgent :meth:`wait_until` has to wait: where the log is applied
        elsewhere (``follow_only``), the way to make that runner :meth:`hurry`."""
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._one_pass: dict[str, OnePassFold] = {}  # see rebuild(one_pass=True)
        self._checkpoints: dict[str, int] = dict.fromkeys(names, 0)
        self._head = 0
        self._advanced = asyncio.Event()
        self._stop = asyncio.Event()
        self._running = 0
        self._run_exited = asyncio.Event()
        self._failure: BaseException | None = None
        self._closed = False

    # -- state -----------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        """The log the projections are folded from."""
        return self._store

    @property
    def database(self) -> ProjectionDatabase:
        """Where the rows and checkpoints are."""
        return self._database

    @property
    def checkpoints(self) -> Mapping[str, int]:
        """The position each projection has committed up to (as last seen)."""
        return dict(self._checkpoints)

    @property
    def position(self) -> int:
        """The position every projection has applied up to: the lowest checkpoint."""
        return min(self._checkpoints.values())

    @property
    def lag(self) -> int:
        """Events in the log (as last seen) that some projection has not applied yet."""
        return max(0, self._head - self.position)

    @property
    def is_leader(self) -> bool:
        """Whether this runner leads: on PostgreSQL, the one whose :meth:`run` applies
        (while it holds the leadership lock; a follower only follows the checkpoints); on
        SQLite, where every running runner applies, the one holding the file lock (its
        process sends the outbox). Never a ``follow_only`` runner."""
        return self._database.is_leader

    def _advance(self, reached: Mapping[str, int]) -> None:
        self._checkpoints.update({name: reached.get(name, 0) for name in self._names})
        self._head = max(self._head, *self._checkpoints.values())
        self._advanced.set()
        self._advanced = asyncio.Event()

    # -- connections -------------------------------------------------------------------

    async def open(self) -> None:
        """Open the connections, create the tables, load the checkpoints. Idempotent."""
        if self._closed:
            raise ProjectionStoppedError("the projection runner is closed")
        async with self._open_lock:
            if self._opened:
                return
            await self._database.open()
            try:
                stored = await self._database.transaction(
                    partial(checkpoints.setup, projections=self._projections)
                )
            except BaseException:
                await self._database.close()
                raise
            self._opened = True
            self._advance(stored)

    async def _ready(self) -> ProjectionDatabase:
        await self.open()
        if self._closed:
            raise ProjectionStoppedError("the projection runner is closed")
        return self._database

    async def query(self, fn: Callable[[SqlConnection], T]) -> T:
        """Run ``fn(conn)`` on a read-only connection, in a worker thread (SQLite: one
        snapshot per call if ``fn`` opens a transaction, otherwise per statement;
        PostgreSQL: one snapshot per call). Driver errors become
        :class:`~eventstore.errors.StoreUnavailableError` (or ``EventStoreError``)."""
        database = await self._ready()
        return await database.read(fn)

    # -- applying ----------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Apply everything in the log now to every projection; return the position reached.

        Applies whether or not this runner leads (see the module docstring)."""
        return await self._catch_up(stoppable=False)

    async def _catch_up(self, *, stoppable: bool) -> int:
        database = await self._ready()
        async with self._apply_lock:
            self._head = max(self._head, await self._store.last_position())
            while True:
                after = self.position
                batch = await self._store.read_all(
                    after, self._batch_size, leave_out=self._left_out
                )
                if not batch:
                    return after
                # All of them: apply() skips those whose stored checkpoint is past the batch.
                apply = partial(
                    checkpoints.apply,
                    projections=self._projections,
                    events=batch,
                    one_pass=self._one_pass,
                )
                self._advance(await database.transaction(apply, notify=True))
                if len(batch) < self._batch_size and self.position >= batch[-1].position:
                    return self.position
                if stoppable and self._stop.is_set():
                    return self.position

    async def run(self) -> None:
        """Catch up, then follow the log as it grows, until :meth:`stop`, :meth:`close` or
        cancellation; on PostgreSQL only while leading, following the leader otherwise.
        Transient database errors (locked, I/O, a lost connection) are logged and retried
        with backoff; any other error ends ``run()`` (raised) and fails :meth:`wait_until`.
        After :meth:`stop`, ``run()`` returns (see there): a stopped runner stays stopped."""
        self._running += 1
        self._run_exited.clear()
        self._failure = None
        delay = _RETRY_FIRST
        led = False
        paused = False  # whether the last transaction's events gathered during a pause
        try:
            while not self._stop.is_set():
                try:
                    database = await self._ready()
                    if not self._follow_only and await database.lead(self._names):
                        if not led:  # the checkpoints may have moved while following
                            self._advance(await database.read(checkpoints.read_checkpoints))
                            led = True
                        before = self.position
                        self._hurried = False  # what it asked for is in the log read next
                        position = await self._catch_up(stoppable=True)
                        if self._stop.is_set():
                            break
                        # Busy: many events came since the last look. Not when they came
                        # during a pause: that would keep a quiet log pausing for good.
                        if position - before >= BUSY_BATCH and not paused:
                            await self._pause()
                            paused = True
                        else:
                            paused = False
                        if not self._stop.is_set():
                            await self._wait_for_log(position)
                        if self._stop.is_set():  # apply what came meanwhile, then return
                            await self._catch_up(stoppable=True)
                            break
                    else:
                        led = False
                        await self._follow(database)
                    delay = _RETRY_FIRST
                except StoreUnavailableError as exc:
                    led = False
                    log.warning("projections: %s; retrying in %.1f s", exc, delay)
                    await self._until_stopped(asyncio.sleep(delay))
                    delay = min(delay * 2, _RETRY_MAX)
        except Exception as exc:
            self._failure = exc
            self._advanced.set()
            # Let another instance lead (its session ends): a failed leader must not hold
            # the projections (and the outbox) hostage until this process stops.
            # Reads reconnect on demand (open() again), without the leadership.
            async with self._open_lock, self._apply_lock:
                with contextlib.suppress(Exception):
                    await self._database.close()
                self._opened = False
            raise
        finally:
            self._running -= 1
            if not self._running:
                self._run_exited.set()

    async def _follow(self, database: ProjectionDatabase) -> None:
        """One round of a follower: re-read the shared checkpoints, then wait for the
        leader's next commit (or the time to re-read, or to try the lock again)."""
        seen = database.changes
        self._advance(await database.read(checkpoints.read_checkpoints))
        self._head = max(self._head, await self._store.last_position())
        await self._until_stopped(database.wait_for_change(seen))

    async def _until_stopped(self, waiting: Awaitable[object]) -> object:
        """``waiting``'s result, or None as soon as :meth:`stop` is called."""
        task = asyncio.ensure_future(waiting)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, stopping):
                pending.cancel()
            await asyncio.gather(task, stopping, return_exceptions=True)
        if task.done() and not task.cancelled():
            if (exc := task.exception()) is not None:
                raise exc
            return task.result()
        return None

    async def _pause(self) -> None:
        """Up to ``live_interval`` after a busy transaction, unless stopped, hurried, or an
        urgent reader waits for a position not applied yet. An urgent reader served by
        the transaction just committed does not shorten it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._live_interval
        while not self._stop.is_set():
            position = self.position
            if self._hurried or any(target > position for target in self._urgent_targets):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await self._until_stopped(asyncio.wait_for(self._wake.wait(), remaining))

    def hurry(self) -> None:
        """Apply what the log holds now, without the rest of the ``live_interval`` pause
        (someone waits for it, and cannot say up to where: serve's reads, through its
        child's stdin)."""
        self._hurried = True
        self._wake.set()

    async def _wait_for_log(self, position: int) -> None:
        reached = await self._until_stopped(
            self._store.wait_for_events(position, timeout=self._idle_timeout)
        )
        if isinstance(reached, int):
            self._head = max(self._head, reached)

    def stop(self) -> None:
        """Ask :meth:`run` to return: after the transaction in progress, if any; a runner
        that applies, caught up and following the log, first applies one more batch of
        what the log holds (what gathered during its pause)."""
        self._stop.set()

    async def wait_until(self, position: int, *, urgent: bool = True) -> None:
        """Return once every projection has applied the log up to ``position``.

        ``urgent`` (a reader waits for its own writes): the runner applies without its
        ``live_interval`` pause (and :attr:`on_behind` is told, for a ``follow_only``
        runner). Not urgent: whenever the runner gets there (a background task that
        wants to know when the projections move on).

        Does not apply anything itself: something must be running :meth:`run` (a leader
        here or, on PostgreSQL, elsewhere while this runner's ``run()`` follows it) or
        calling :meth:`catch_up`. Raises :class:`ProjectionStoppedError` if the runner
        closes or ``run()`` fails first. Bound it with ``asyncio.timeout`` where needed.
        """
        if self.position >= position:
            return
        targets = self._urgent_targets
        try:
            if urgent:
                # Counted by position: once the runner is there, it may pause again even
                # before this task has resumed.
                targets[position] = targets.get(position, 0) + 1
                self._wake.set()
                if self.on_behind is not None:
                    try:
                        self.on_behind()
                    except Exception:  # the reader then waits for the pause to end
                        log.exception("projections: telling the applying runner to hurry")
            while self.position < position:
                if self._closed or self._failure is not None:
                    raise ProjectionStoppedError(
                        "the projection runner " + ("closed" if self._closed else "failed")
                    ) from self._failure
                await self._advanced.wait()
        finally:
            if urgent:
                if targets[position] > 1:
                    targets[position] -= 1
                else:
                    del targets[position]

    async def rebuild(self, names: Sequence[str] | None = None, *, one_pass: bool = False) -> int:
        """Reset the projections named (all by default) and apply the log again from 0.

        The reset commits first: until the rebuild catches up, readers see partial rows
        (and :attr:`lag` shows how far it is), and the projections' ``read_indexes`` are
        missing (created at the end, or when a runner next opens the database, should
        the rebuild stop before). Returns the position reached.

        ``one_pass``: the database is a shadow that nobody reads before this returns, and
        that is thrown away should it fail (``postback rebuild``'s children). A
        projection with ``one_pass()`` then folds with a :class:`OnePassFold` of its
        own, which completes its rows at the end. Not with :meth:`run` at the same time.
        """
        chosen = [p for p in self._projections if names is None or p.name in names]
        unknown = set(names or ()) - {p.name for p in chosen}
        if unknown:
            raise ValueError(f"unknown projections: {sorted(unknown)}")
        database = await self._ready()
        async with self._apply_lock:
            reset = partial(checkpoints.reset, projections=chosen, defer_indexes=True)
            stored = await database.transaction(reset, notify=True)
            self._checkpoints.update({p.name: stored.get(p.name, 0) for p in chosen})
            if one_pass:
                self._one_pass = checkpoints.one_pass_folds(chosen)
        try:
            position = await self.catch_up()
            finish = partial(
                checkpoints.finish_rebuild, projections=chosen, one_pass=self._one_pass
            )
            await database.transaction(finish)
        finally:
            self._one_pass = {}
        return position

    async def close(self) -> None:
        """Stop :meth:`run`, wait for it, close the connections. Idempotent."""
        self._stop.set()
        if self._running:
            await self._run_exited.wait()
        self._closed = True
        self._advanced.set()
        async with self._open_lock, self._apply_lock:
            await self._database.close()
            self._opened = False
