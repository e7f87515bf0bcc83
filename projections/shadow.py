"""Rebuilding SQLite projections in shadow files, in parallel, and swapping them in at once.

A rebuild in place (:meth:`projections.runner.ProjectionRunner.rebuild`) applies the whole
log in one process, and readers see partial rows until it has caught up. With SQLite
projections there is a faster and gentler way, which ``postback rebuild`` takes:

1. :func:`plan_shards` splits the projections into groups of about equal cost (a
   projection may declare its relative cost as ``rebuild_weight``; 1.0 otherwise).
2. Each group is rebuilt by its own process into a fresh SQLite file of its own (a
   *shadow*), up to one position of the log: the groups' folds run on separate cores, and
   never wait for each other's write lock.
3. :func:`swap_in` copies the shadows' tables into the live projections file in **one**
   transaction, with their checkpoints: readers see the old rows until it commits, then
   the new ones, never a mix. SQLite copies a table into an empty one of the same
   definition record by record without decoding them (its transfer optimisation),
   indexes included, so the swap costs a fraction of the rebuild.

On PostgreSQL a shadow is a schema of its own in the log's database, and
:func:`swap_schemas` moves the shadows' tables into the live schema (``ALTER TABLE ... SET
SCHEMA``, their indexes with them) in one transaction: no row is copied.

A shadow is an ordinary projection database: a failed or interrupted rebuild leaves the
live projections as they were (the caller removes the shadow files or schemas).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

from eventstore.errors import EventStoreError
from projections import checkpoints
from projections.database import SqlConnection, write_transaction
from projections.verify import owned_tables, quote

if TYPE_CHECKING:
    from projections.runner import Projection

T = TypeVar("T")

BUSY_TIMEOUT_MS: Final = 60_000
"""How long the swap waits for the live projections' write lock (a running ``serve``
commits a batch at a time, so it is never held long)."""


def rebuild_weight(projection: Projection) -> float:
    """The projection's relative rebuild cost (its ``rebuild_weight``, 1.0 if it has none)."""
    weight = getattr(projection, "rebuild_weight", 1.0)
    return float(weight) if isinstance(weight, int | float) and weight > 0 else 1.0


def plan_shards(projections: Sequence[Projection], jobs: int) -> list[list[Projection]]:
    """``projections`` in at most ``jobs`` non-empty groups of about equal total weight
    (the heaviest first, each to the lightest group so far), each group in catalogue order.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    count = min(jobs, len(projections))
    groups: list[list[Projection]] = [[] for _ in range(count)]
    loads = [0.0] * count
    order = {id(projection): index for index, projection in enumerate(projections)}
    for projection in sorted(projections, key=rebuild_weight, reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(projection)
        loads[lightest] += rebuild_weight(projection)
    for group in groups:
        group.sort(key=lambda projection: order[id(projection)])
    return [group for group in groups if group]


def swap_in(path: str, shards: Sequence[tuple[str, Sequence[Projection]]]) -> dict[str, int]:
    """Replace the projections of ``shards`` (``(shadow file, its projections)``) in the
    SQLite projections file ``path`` by the shadows' rows and checkpoints, in one
    transaction. Returns the checkpoints it set.

    When the file holds nothing but the shadows' projections (their tables and what is
    built on them, the checkpoints' table, and only their checkpoints; a new file) and has
    the shadows' header settings (:func:`_holds_all_of`, asked again just before the
    copy), the whole file is replaced: the other shadows' tables are copied into the
    largest shadow, which is then copied page by page into ``path`` by SQLite's online
    backup, one write transaction in which no record is decoded and no index rebuilt
    (:func:`_swap_whole_file`); should the file stay locked longer than the busy timeout,
    it gives up as a transaction would. Otherwise, table by table: first the projections' tables
    are created in ``path`` where missing (a transaction of its own); then each projection
    is reset as :func:`projections.checkpoints.reset` does (its tables dropped and created
    again, read indexes included) and each of its tables filled with ``INSERT INTO ...
    SELECT *`` from its shadow.

    Raises ``ValueError`` if a shadow lacks a projection's checkpoint (it was not rebuilt
    there) or one of its tables, ``sqlite3.Error`` on the database's errors
    (``EventStoreError`` for a programming error); either way no row of ``path`` changes
    (the largest shadow may have gained the others' tables: shadows are thrown away).

    The swap holds the file's write lock throughout (about 1.5 s per million events of
    ``bench/rebuild.py``'s log here for the whole file, 2 to 2.5 s table by table): a
    runner writing the same file waits, and retries should that exceed its busy timeout.
    Every copied page goes through the write-ahead log, which is truncated afterwards if
    no reader holds it.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        # As the runners write this file: a swap lost on power loss leaves the old rows
        # and checkpoints, which the next catch-up brings forward from the log.
        conn.execute("PRAGMA synchronous = NORMAL")
        reached = None
        if _holds_all_of(conn, shards):
            reached = _swap_whole_file(conn, shards)
        if reached is None:
            reached = _swap_tables(conn, shards)
        # The log now holds a copy of every row; give the disk back (best effort: a
        # reader still in it keeps it, and the next checkpoint reuses it).
        conn.execute("PRAGMA busy_timeout = 1000")
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return reached
    finally:
        conn.close()


_FILE_SETTINGS: Final = ("page_size", "auto_vacuum", "user_version", "application_id")
"""What a page-by-page copy carries over from the shadow's header: it must already be the
live file's (and the backup cannot copy into a file in WAL mode of another page size)."""


def _holds_all_of(
    conn: sqlite3.Connection, shards: Sequence[tuple[str, Sequence[Projection]]]
) -> bool:
    """Whether replacing the whole file by the shadows loses nothing: everything in it (its
    tables, and the indexes, triggers and views on them) belongs to the shadows'
    projections or is the checkpoints' table, so does every checkpoint, and its header
    settings are the shadows'."""
    projections = [projection for _shadow, group in shards for projection in group]
    owned = {table for projection in projections for table in owned_tables(projection)}
    owned.add("projection_checkpoints")
    objects = conn.execute(
        "SELECT DISTINCT tbl_name FROM sqlite_schema WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    ).fetchall()
    if not {str(name) for (name,) in objects} <= owned:
        return False
    if conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'projection_checkpoints'"
    ).fetchone():
        names = {str(name) for (name,) in conn.execute("SELECT name FROM projection_checkpoints")}
        if not names <= {projection.name for projection in projections}:
            return False
    live = _settings(conn)
    for shadow, _group in shards:
        with contextlib.closing(sqlite3.connect(shadow)) as other:
            if _settings(other) != live:
                return False
    return True


def _settings(conn: sqlite3.Connection) -> tuple[object, ...]:
    return tuple(conn.execute(f"PRAGMA {name}").fetchone()[0] for name in _FILE_SETTINGS)


def _swap_whole_file(
    conn: sqlite3.Connection, shards: Sequence[tuple[str, Sequence[Projection]]]
) -> dict[str, int] | None:
    """The other shadows merged into the largest, which then replaces the file ``conn``
    is open on (:meth:`sqlite3.Connection.backup`: one write transaction on it; its
    readers see the old file until it commits, then the new one, whose schema counter
    has moved so that every connection reads the new schema). None, with the live file
    untouched, if the file gained something of its own during the merge."""
    largest = max(range(len(shards)), key=lambda index: os.path.getsize(shards[index][0]))
    target_path, own = shards[largest]
    others = [shard for index, shard in enumerate(shards) if index != largest]
    target = sqlite3.connect(target_path, isolation_level=None)
    try:
        reached = _own_checkpoints(target, target_path, own)
        # A shadow is thrown away should anything fail: no journal on disk, no syncs.
        target.execute("PRAGMA journal_mode = MEMORY")
        target.execute("PRAGMA synchronous = OFF")
        moved = [projection for _shadow, projections in others for projection in projections]
        # Before anything is attached, as in _swap_tables (unqualified names).
        write_transaction(target, lambda tx: checkpoints.setup(tx, moved))
        for index, (shadow, _projections) in enumerate(others):
            target.execute(f"ATTACH DATABASE ? AS shadow{index}", (shadow,))
        merged = write_transaction(
            target,
            lambda tx: {
                name: position
                for index, (shadow, projections) in enumerate(others)
                for name, position in _copy_shard(tx, f"shadow{index}", shadow, projections).items()
            },
        )
        if not _holds_all_of(conn, shards):  # looked at again: the merge took a while
            return None
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000

        def give_up_when_locked_too_long(status: int, _remaining: int, _total: int) -> None:
            # sqlite3's backup retries a busy file for as long as it stays busy; a swap
            # waits as long as the other one does (BEGIN IMMEDIATE, with busy_timeout).
            if (
                status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                and time.monotonic() > deadline
            ):
                raise sqlite3.OperationalError("database is locked")

        with _straight_into_an_empty_file(conn):
            target.backup(conn, progress=give_up_when_locked_too_long)
    finally:
        target.close()
    return {**reached, **merged}


@contextlib.contextmanager
def _straight_into_an_empty_file(conn: sqlite3.Connection) -> Iterator[None]:
    """The backup into a live file that holds nothing yet (no table: a first rebuild, or
    the projections file deleted) with a rollback journal, of nothing, instead of the
    write-ahead log: its pages are then written into the file once, not into the log and
    then copied from it (0.25 s instead of 0.6 to 0.8 s for ``bench/rebuild.py``'s 190
    MB). SQLite leaves WAL mode only while no other connection is in a transaction on the
    file (connections open on it notice the change at their next one); if one is, the
    backup goes through the log as for any file. WAL mode again afterwards (a reader that
    came meanwhile and stays past a second leaves the file in rollback mode until a
    runner opens it, which sets WAL mode)."""
    left_wal = False
    if conn.execute("SELECT 1 FROM sqlite_schema").fetchone() is None:
        conn.execute("PRAGMA busy_timeout = 0")
        with contextlib.suppress(sqlite3.OperationalError):  # busy: being read
            left_wal = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        yield
    finally:
        if left_wal:
            conn.execute("PRAGMA busy_timeout = 1000")
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _shadow_checkpoints(
    stored: dict[str, int], projections: Sequence[Projection], shadow: str
) -> dict[str, int]:
    """The checkpoints of ``projections`` among those ``stored`` in ``shadow``; ValueError
    naming the ones it lacks (they were not rebuilt there)."""
    missing = [p.name for p in projections if p.name not in stored]
    if missing:
        raise ValueError(f"the shadow {shadow} has no checkpoint for {', '.join(missing)}")
    return {p.name: stored[p.name] for p in projections}


def _own_checkpoints(
    conn: sqlite3.Connection, path: str, projections: Sequence[Projection]
) -> dict[str, int]:
    """The checkpoints of the shadow's own ``projections``, each of its tables there."""
    reached = _shadow_checkpoints(checkpoints.read_checkpoints(conn), projections, path)
    present = {
        str(name) for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
    }
    lacking = [t for p in projections for t in owned_tables(p) if t not in present]
    if lacking:
        raise ValueError(f"the shadow {path} has no table {', '.join(lacking)}")
    return reached


def _swap_tables(
    conn: sqlite3.Connection, shards: Sequence[tuple[str, Sequence[Projection]]]
) -> dict[str, int]:
    """Each projection's tables replaced by its shadow's, in one transaction."""
    # Every table the projections reset must exist here first: an unqualified name
    # that the main database lacks resolves to an attached database's table, and the
    # reset would drop the shadow's instead.
    everything = [projection for _shadow, projections in shards for projection in projections]
    write_transaction(conn, lambda tx: checkpoints.setup(tx, everything))
    # ATTACH is refused inside a transaction: every shadow first, then one transaction.
    for index, (shadow, _projections) in enumerate(shards):
        conn.execute(f"ATTACH DATABASE ? AS shadow{index}", (shadow,))
    return write_transaction(
        conn,
        lambda tx: {
            name: position
            for index, (shadow, projections) in enumerate(shards)
            for name, position in _copy_shard(tx, f"shadow{index}", shadow, projections).items()
        },
    )


def _copy_shard(
    conn: SqlConnection, schema: str, path: str, projections: Sequence[Projection]
) -> dict[str, int]:
    """The tables of ``projections`` replaced by those of the attached ``schema`` (the
    shadow file ``path``), with its checkpoints."""
    rows = conn.execute(f"SELECT name, position FROM {schema}.projection_checkpoints")
    reached = _shadow_checkpoints(
        {str(name): int(position) for name, position in rows}, projections, path
    )
    checkpoints.reset(conn, projections)
    for projection in projections:
        for table in owned_tables(projection):
            name = quote(table)
            conn.execute(f"INSERT INTO main.{name} SELECT * FROM {schema}.{name}")
    checkpoints.save(conn, reached)
    return reached


def _tables_of(projections: Sequence[Projection]) -> list[str]:
    """Every table ``projections`` own, sorted: the one order locks are taken in."""
    return sorted({table for projection in projections for table in owned_tables(projection)})


class TablesBusyError(EventStoreError):
    """:func:`swap_schemas` could not lock the live tables at once (another session is
    reading or writing them); nothing changed, and the swap may be tried again."""


_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a NOWAIT lock that is taken


def swap_schemas(
    conn: SqlConnection, shards: Sequence[tuple[str, Sequence[Projection]]]
) -> dict[str, int]:
    """PostgreSQL: replace the projections of ``shards`` (``(shadow schema, its
    projections)``) in the schema ``conn`` works in (its ``current_schema()``, the live
    one) by the shadows' tables, moved over with their indexes, and their checkpoints.
    Run it as the body of one write transaction of the live projection database
    (:meth:`~projections.database.ProjectionDatabase.transaction`). Returns the
    checkpoints it set; the shadow schemas are left without these tables.

    First it locks every live table of these projections, in one statement and without
    waiting (``NOWAIT``): if any is in use it raises :class:`TablesBusyError` at once,
    having waited for nothing and blocked no one (the caller tries again a little later).
    Once it holds them, dropping and moving tables takes milliseconds, and readers wait
    only that long; they never see a mix of old and new tables. Raises ``ValueError`` if a
    shadow lacks a projection's checkpoint. Either way the transaction rolls back and
    nothing changes.
    """
    (live,) = conn.execute("SELECT current_schema()").fetchone()
    everything = [projection for _shadow, projections in shards for projection in projections]
    tables = _tables_of(everything)
    present = {
        str(name)
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    }
    locked = [f"{quote(live)}.{quote(table)}" for table in tables if table in present]
    if locked:
        try:
            conn.execute(f"LOCK TABLE {', '.join(locked)} IN ACCESS EXCLUSIVE MODE NOWAIT")
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                raise TablesBusyError(f"PostgreSQL: {exc}") from exc
            raise
    checkpoints.setup(conn, everything)  # the checkpoint table, where this schema lacks it
    reached: dict[str, int] = {}
    for shadow, projections in shards:
        rows = conn.execute(f"SELECT name, position FROM {quote(shadow)}.projection_checkpoints")
        stored = {str(name): int(position) for name, position in rows.fetchall()}
        reached.update(_shadow_checkpoints(stored, projections, shadow))
        for projection in projections:
            for table in owned_tables(projection):
                conn.execute(f"DROP TABLE IF EXISTS {quote(live)}.{quote(table)}")
                conn.execute(f"ALTER TABLE {quote(shadow)}.{quote(table)} SET SCHEMA {quote(live)}")
    checkpoints.save(conn, reached)
    return reached


def lock_for_reading(conn: SqlConnection, projections: Sequence[Projection]) -> None:
    """PostgreSQL: take a shared lock on the tables of ``projections`` as the *first*
    statement of a snapshot transaction (before any query fixes its snapshot), so that no
    swap (:func:`swap_schemas`) replaces one of them before the transaction ends: a reader
    that compares them all (``verify``) reads every table as of one moment. Waits for a
    swap under way. The tables must exist (a runner's setup creates them)."""
    tables = _tables_of(projections)
    conn.execute(f"LOCK TABLE {', '.join(map(quote, tables))} IN ACCESS SHARE MODE")
