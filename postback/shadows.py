"""Where ``rebuild`` (and ``verify``'s replay) builds projections in shadows, per backend.

A *shadow* is a projection database of its own that one child process
(``postback rebuild --shadow``) fills with a group of projections (see
:mod:`projections.shadow`):

* **SQLite**: a new file in a temporary directory (for a rebuild, beside the projections
  file: the swap reads it back, and it takes as much disk as the projections); the swap
  copies its tables into the projections file (:func:`projections.shadow.swap_in`).
* **PostgreSQL**: a new schema in the log's database (the role needs ``CREATE`` there),
  ``postback_rebuild_<random>`` or ``postback_verify_<random>``; the swap moves its tables
  into the live schema (:func:`projections.shadow.swap_schemas`).

Either is removed when the command ends, whatever happened (except a ``SIGKILL``, which
leaves the directory or the schemas behind; they hold nothing the service reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial

from postback.config import Config
from projections.database import ProjectionDatabase, SQLiteProjectionDatabase
from projections.runner import Projection, projections_path
from projections.shadow import TablesBusyError, swap_in, swap_schemas

SWAP_PATIENCE = 60.0
"""PostgreSQL: how long (seconds) the swap keeps trying to lock the live tables, which it
does without waiting while anyone reads them (then again after 0.05 s, doubling to 1 s)."""


@contextlib.asynccontextmanager
async def shadow_places(config: Config, count: int, purpose: str) -> AsyncIterator[list[str]]:
    """``count`` new, empty places for shadows (SQLite: paths of files not yet created;
    PostgreSQL: names of new schemas), removed with everything in them on exit.
    ``purpose`` (``rebuild`` or ``verify``) names them."""
    if config.dsn is None:
        # A rebuild's shadows go beside the projections file (the swap reads them back,
        # and the system's temporary directory may be small); a replay's to the system's.
        # Absolute: the children and the swap must find them whatever their directory.
        live = projections_path(config.db_path)
        beside = os.path.dirname(os.path.abspath(live))  # noqa: ASYNC240 (once, no I/O)
        folder = beside if purpose == "rebuild" else None
        with tempfile.TemporaryDirectory(prefix=f".postback-{purpose}-", dir=folder) as tmp:
            yield [os.path.join(tmp, f"shadow{n}.db") for n in range(count)]
        return
    from eventstore.postgres_driver import translated
    from projections.pg_database import temporary_schema

    dsn, prefix = config.dsn, f"postback_{purpose}_"
    with translated():
        async with contextlib.AsyncExitStack() as stack:
            schemas = [
                await stack.enter_async_context(temporary_schema(dsn, prefix)) for _ in range(count)
            ]
            yield schemas


def shadow_database(config: Config, shadow: str) -> ProjectionDatabase:
    """The projection database of the shadow ``shadow`` (a file, or a schema)."""
    if config.dsn is None:
        # Thrown away should anything fail: journal in memory, no syncs.
        return SQLiteProjectionDatabase(shadow, scratch=True)
    from projections.pg_database import PostgresProjectionDatabase

    return PostgresProjectionDatabase(config.dsn, schema=shadow)


async def swap_shadows_in(
    config: Config, shards: Sequence[tuple[str, Sequence[Projection]]]
) -> dict[str, int]:
    """Replace the live projections of ``shards`` (``(shadow, its projections)``) by the
    shadows', with their checkpoints, in one transaction; the checkpoints set.

    Raises ``ValueError`` (a shadow lacks a checkpoint), ``sqlite3.Error`` or
    :class:`~eventstore.errors.EventStoreError`; the live projections are then unchanged.
    """
    if config.dsn is None:
        return await asyncio.to_thread(swap_in, projections_path(config.db_path), shards)
    from projections.pg_database import PostgresProjectionDatabase

    database = PostgresProjectionDatabase(config.dsn)
    deadline = time.monotonic() + SWAP_PATIENCE
    pause = 0.05
    try:
        while True:
            try:
                # notify: followers (other instances) re-read the checkpoints at once.
                swap = partial(swap_schemas, shards=shards)
                return await database.transaction(swap, notify=True)
            except TablesBusyError as exc:
                if time.monotonic() + pause > deadline:
                    raise TablesBusyError(
                        f"the live tables stayed in use for {SWAP_PATIENCE:.0f} s (a verify,"
                        f" a pg_dump or another long transaction reading them?): {exc}"
                    ) from exc
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
    finally:
        await database.close()
