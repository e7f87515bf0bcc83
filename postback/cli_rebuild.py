"""``postback rebuild``: the projections built again from the log, in parallel where it can.

* **Several projections, ``--jobs`` above 1** (the default on a machine with several
  cores), on either backend: the projections are split into ``--jobs`` groups of about
  equal cost (:func:`projections.shadow.plan_shards`); each group is rebuilt by a child
  ``postback rebuild --shadow SHADOW`` into a shadow of its own (:mod:`postback.shadows`:
  a new SQLite file beside the projections file, or a new PostgreSQL schema), up to the
  log's position when the command started; then the shadows replace the live tables in
  one transaction (:func:`postback.shadows.swap_shadows_in`), and the projections catch
  up with whatever was appended meanwhile. Readers (a running ``serve``) see the old rows
  until the swap and the new ones after it. The shadows are removed at the end whether
  the rebuild succeeded or not; a failed or interrupted rebuild leaves the live
  projections untouched, as does a SIGINT or SIGTERM before the swap (one during it
  takes effect once it has committed).
* **Otherwise** (one projection, ``--jobs 1``): in place, in this process
  (:meth:`projections.runner.ProjectionRunner.rebuild`): readers see partial rows until
  it has caught up.

Progress goes to stderr, the summary to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from eventstore.errors import EventStoreError
from postback.backend import open_store, projection_runner
from postback.cli_progress import LogView, ProgressBar
from postback.config import Config
from postback.shadows import shadow_database, shadow_places, swap_shadows_in
from postback.signals import stop_on_signals
from projections.catalog import all_projections
from projections.runner import Projection, ProjectionRunner
from projections.shadow import plan_shards

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 10_000
"""Events per batch of a rebuild (and of verify's replay), unless told."""

_SHADOW_REPORT_INTERVAL = 0.25
"""Seconds between a shadow child's progress lines."""


def default_jobs() -> int:
    """Processes a rebuild uses unless told: one per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def rebuild(config: Config, names: Sequence[str], batch_size: int, jobs: int) -> int:
    """Reset the projections ``names`` (all when empty) and apply the whole log again."""
    known = [projection.name for projection in all_projections()]
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"postback: unknown projection {', '.join(unknown)}; known: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    wanted = list(dict.fromkeys(names)) or known
    chosen = [projection for projection in all_projections() if projection.name in wanted]
    if jobs > 1 and len(chosen) > 1:
        return asyncio.run(_rebuild_in_shadows(config, wanted, chosen, batch_size, jobs))
    return asyncio.run(_rebuild_in_place(config, wanted, batch_size))


def _summary(names: Sequence[str], position: int, seconds: float, where: str) -> None:
    rate = position / max(seconds, 1e-9)
    print(
        f"rebuilt {', '.join(names)} from {position:,} events in {seconds:.2f} s"
        f" ({rate:,.0f} events/s) into {where}"
    )


async def _rebuild_in_place(config: Config, names: Sequence[str], batch_size: int) -> int:
    store = await open_store(config, must_exist=True, poll_interval=None)
    try:
        total = await store.last_position()
        bar = ProgressBar("rebuild")
        view = LogView(store, on_progress=lambda position, _head: bar.update(position, total))
        runner = projection_runner(view.as_store(), config, batch_size=batch_size)
        try:
            started = time.perf_counter()
            position = await runner.rebuild(names)
            seconds = time.perf_counter() - started
            bar.finish(position, max(total, position))
            _summary(names, position, seconds, runner.database.describe())
        finally:
            await runner.close()
    finally:
        await store.close()
    return 0


# -- in shadows ---------------------------------------------------------------------------------


async def _rebuild_in_shadows(
    config: Config,
    names: Sequence[str],
    chosen: Sequence[Projection],
    batch_size: int,
    jobs: int,
) -> int:
    stop = stop_on_signals()
    store = await open_store(config, must_exist=True, poll_interval=None)
    try:
        started = time.perf_counter()
        head = await store.last_position()
        groups = plan_shards(chosen, jobs)
        bar = ProgressBar("rebuild")
        async with shadow_places(config, len(groups), "rebuild") as places:
            shards = list(zip(places, groups, strict=True))
            building = build_shadows(config, shards, head, batch_size, bar.update)
            failed = await _unless_stopped(building, stop)
            if stop.is_set() or failed:
                return _unchanged(bar, failed or "interrupted")
            try:
                # Not interruptible: a signal now takes effect once it has committed.
                swapped = await swap_shadows_in(config, shards)
            except (sqlite3.Error, EventStoreError, ValueError) as exc:
                return _unchanged(bar, f"swapping the shadows in: {exc}")
        if stop.is_set():
            return _interrupted_after_the_swap(bar, names, min(swapped.values()))
        # Whatever was appended since the shadows' position, applied in place (a signal
        # stops it between batches: each batch commits with its checkpoints).
        view = LogView(store, on_progress=lambda position, now: bar.update(position, now))
        runner = projection_runner(view.as_store(), config, batch_size=batch_size)
        try:
            position = await _unless_stopped(runner.catch_up(), stop)
            where = runner.database.describe()
            # What it is known to have committed (a batch cut short by the signal may have
            # committed too: "at least").
            reached = max(runner.position, min(swapped.values()))
        finally:
            await runner.close()
        if position is None:
            return _interrupted_after_the_swap(bar, names, reached)
        seconds = time.perf_counter() - started
        bar.finish(position, max(view.head, position))
        _summary(names, position, seconds, f"{where} ({len(groups)} processes)")
    finally:
        await store.close()
    return 0


def _interrupted_after_the_swap(bar: ProgressBar, names: Sequence[str], reached: int) -> int:
    bar.end_line()
    print(
        f"postback: rebuild interrupted after the swap: {', '.join(names)} rebuilt up to"
        f" position {reached:,} at least; the next catch-up applies the rest",
        file=sys.stderr,
    )
    return 1


def _unchanged(bar: ProgressBar, why: str) -> int:
    bar.end_line()
    print(f"postback: rebuild failed ({why}); the projections are as they were", file=sys.stderr)
    return 1


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None once ``stop`` is set (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


def shadow_command(
    config: Config, names: Sequence[str], shadow: str, until: int, batch_size: int
) -> list[str]:
    """The child that rebuilds ``names`` into ``shadow`` up to position ``until``
    (``-P``: the working directory is not put on ``sys.path``). On PostgreSQL the DSN goes
    in the child's environment (:func:`shadow_environment`), where a password is not
    shown to every user of the machine as a command line is."""
    log = [f"--db={config.db_path}"] if config.dsn is None else []  # one argument each:
    return [  # a path may start with "-"
        sys.executable,
        "-P",
        "-m",
        "postback",
        "rebuild",
        *log,
        f"--batch-size={batch_size}",
        f"--shadow={shadow}",
        f"--until={until}",
        "--",
        *names,
    ]


def shadow_environment(config: Config) -> dict[str, str]:
    """The environment of a shadow child: this one, with the log's DSN (PostgreSQL)."""
    environment = dict(os.environ)
    if config.dsn is not None:
        environment["POSTBACK_DSN"] = config.dsn
    return environment


async def build_shadows(
    config: Config,
    shards: Sequence[tuple[str, Sequence[Projection]]],
    head: int,
    batch_size: int,
    on_progress: Callable[[int, int], object],
    on_built: Callable[[int], object] | None = None,
) -> str | None:
    """Run one shadow child per shard (``(new file, its projections)``), all at once, each
    up to position ``head``, telling ``on_progress(slowest child's position, head)`` and
    ``on_built(index)`` as each shard's child succeeds; None when all succeeded, else what
    failed (the others are then stopped)."""
    positions = [0] * len(shards)
    processes: list[asyncio.subprocess.Process] = []
    pending: dict[asyncio.Future[int], int] = {}

    async def follow(index: int, process: asyncio.subprocess.Process) -> int:
        assert process.stdout is not None
        async for line in process.stdout:
            with contextlib.suppress(ValueError):
                positions[index] = int(line)
                on_progress(min(positions), head)
        return await process.wait()

    try:
        for path, group in shards:
            command = shadow_command(config, [p.name for p in group], path, head, batch_size)
            process = await asyncio.create_subprocess_exec(
                *command,
                env=shadow_environment(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                # Its own session: a Ctrl-C reaches this process only, which stops the
                # children itself; a child whose parent died stops at its next report
                # (its stdout is a broken pipe).
                start_new_session=True,
            )
            processes.append(process)
        for index, process in enumerate(processes):
            pending[asyncio.ensure_future(follow(index, process))] = index
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                index = pending.pop(task)
                code = task.result()
                if code != 0:
                    names = ", ".join(p.name for p in shards[index][1])
                    return f"the child rebuilding {names} exited with status {code}"
                if on_built is not None:
                    on_built(index)
        return None
    finally:
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                await process.wait()
        for following in pending:
            following.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def rebuild_shadow(
    config: Config, names: Sequence[str], shadow: str, until: int, batch_size: int
) -> int:
    """The shadow child: rebuild ``names`` into ``shadow`` (a new SQLite file, or an empty
    PostgreSQL schema) up to ``until``, printing the position reached on stdout (a few
    times a second, and last)."""
    chosen = [projection for projection in all_projections() if projection.name in names]
    if not names or len(chosen) != len(set(names)):
        print("postback: --shadow needs the names of known projections", file=sys.stderr)
        return 2
    if config.dsn is None and os.path.exists(shadow):
        print("postback: --shadow needs a new file", file=sys.stderr)
        return 2
    return asyncio.run(_rebuild_shadow(config, chosen, shadow, until, batch_size))


_TABLES_HERE = (
    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()"
)


async def _rebuild_shadow(
    config: Config, chosen: Sequence[Projection], shadow: str, until: int, batch_size: int
) -> int:
    store = await open_store(config, must_exist=True, poll_interval=None)
    try:
        said = 0.0

        def report(position: int, _head: int) -> None:
            nonlocal said
            if (now := time.monotonic()) - said >= _SHADOW_REPORT_INTERVAL:
                said = now
                print(position, flush=True)

        view = LogView(store, until=until, on_progress=report)
        database = shadow_database(config, shadow)
        runner = ProjectionRunner(view.as_store(), chosen, database=database, batch_size=batch_size)
        try:
            if config.dsn is not None:
                tables = await database.read(lambda conn: conn.execute(_TABLES_HERE).fetchone())
                if tables[0]:
                    print("postback: --shadow needs an empty schema", file=sys.stderr)
                    return 2
            position = await runner.rebuild(one_pass=True)
        finally:
            await runner.close()
        print(position, flush=True)
    finally:
        await store.close()
    return 0
