"""The checkpoint table and the three transactions of the runner, in portable SQL.

Each function is the body of one write transaction (:meth:`ProjectionDatabase.transaction`)
and reads the checkpoints *inside* it: writers of one database take turns, so what it reads
is the latest, whoever committed it (another runner, another instance).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from eventstore.base import RecordedEvent
from projections.database import SqlConnection

if TYPE_CHECKING:
    from projections.runner import OnePassFold, Projection

CHECKPOINTS_SQL: Final = (
    "CREATE TABLE IF NOT EXISTS projection_checkpoints ("
    " name TEXT PRIMARY KEY, position BIGINT NOT NULL, updated_at TEXT NOT NULL)"
)
_SAVE = (
    "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
    " updated_at = excluded.updated_at"
)
_CREATE = (
    "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES (?, 0, ?)"
    " ON CONFLICT DO NOTHING"
)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def read_checkpoints(conn: SqlConnection) -> dict[str, int]:
    """Every stored checkpoint, by projection name."""
    rows = conn.execute("SELECT name, position FROM projection_checkpoints").fetchall()
    return {str(name): int(position) for name, position in rows}


def read_indexes(projection: Projection) -> Sequence[str]:
    """The projection's optional ``read_indexes``: ``CREATE INDEX IF NOT EXISTS``
    statements that only readers use (its ``apply_batch`` never needs them), so a rebuild
    creates them once at the end instead of maintaining them row by row."""
    indexes: Sequence[str] = getattr(projection, "read_indexes", ())
    return indexes


def one_pass_folds(projections: Sequence[Projection]) -> dict[str, OnePassFold]:
    """A fresh :class:`~projections.runner.OnePassFold` of each of ``projections`` that
    has the optional ``one_pass()``, by projection name."""
    folds: dict[str, OnePassFold] = {}
    for projection in projections:
        make: Callable[[], OnePassFold] | None = getattr(projection, "one_pass", None)
        if make is not None:
            folds[projection.name] = make()
    return folds


def setup(conn: SqlConnection, projections: Sequence[Projection]) -> dict[str, int]:
    """Create the tables (``schema_sql``, then ``read_indexes``) and a checkpoint at 0 for
    each new projection."""
    conn.execute(CHECKPOINTS_SQL)
    now = _now()
    for projection in projections:
        for statement in (*projection.schema_sql, *read_indexes(projection)):
            conn.execute(statement)
    conn.executemany(_CREATE, [(projection.name, now) for projection in projections])
    return read_checkpoints(conn)


def apply(
    conn: SqlConnection,
    projections: Sequence[Projection],
    events: Sequence[RecordedEvent],
    one_pass: Mapping[str, OnePassFold] | None = None,
) -> dict[str, int]:
    """Apply ``events`` to every projection behind, with its checkpoint; returns them all.

    A projection whose stored checkpoint is past the batch is skipped; one that is inside
    it gets only the events after its checkpoint; one that is before the batch (reset by
    another runner) is left alone and reported at its checkpoint, so the runner re-reads
    the log from there. A projection named in ``one_pass`` folds with the
    :class:`~projections.runner.OnePassFold` it maps to instead (see
    :meth:`ProjectionRunner.rebuild`).
    """
    first, last = events[0].position, events[-1].position
    positions = [event.position for event in events]
    stored = read_checkpoints(conn)
    reached: dict[str, int] = {}
    saved: list[tuple[str, int, str]] = []
    now = _now()
    for projection in projections:
        checkpoint = stored.get(projection.name, 0)
        if first - 1 <= checkpoint < last:
            todo = events[bisect.bisect_right(positions, checkpoint) :]
            folder = one_pass.get(projection.name) if one_pass else None
            (projection if folder is None else folder).apply_batch(conn, todo)
            saved.append((projection.name, last, now))
            checkpoint = last
        reached[projection.name] = checkpoint
    if saved:
        conn.executemany(_SAVE, saved)
    return reached


def reset(
    conn: SqlConnection, projections: Sequence[Projection], *, defer_indexes: bool = False
) -> dict[str, int]:
    """Empty the projections (``reset``, then ``schema_sql`` again), checkpoints at 0.

    ``defer_indexes``: leave out the ``read_indexes`` (a rebuild creates them with
    :func:`create_read_indexes` once caught up; should it stop before, the next
    :func:`setup` creates them)."""
    now = _now()
    for projection in projections:
        projection.reset(conn)
        now_too = () if defer_indexes else read_indexes(projection)
        for statement in (*projection.schema_sql, *now_too):
            conn.execute(statement)
    conn.executemany(_SAVE, [(projection.name, 0, now) for projection in projections])
    return read_checkpoints(conn)


def save(conn: SqlConnection, positions: Mapping[str, int]) -> None:
    """Set the checkpoints of ``positions`` (by projection name), whatever they were."""
    now = _now()
    conn.executemany(_SAVE, [(name, position, now) for name, position in positions.items()])


def finish_rebuild(
    conn: SqlConnection,
    projections: Sequence[Projection],
    one_pass: Mapping[str, OnePassFold] | None = None,
) -> None:
    """The end of a rebuild: :meth:`~projections.runner.OnePassFold.finish` of the folds
    of ``projections`` in ``one_pass``, then the ``read_indexes`` of all (which it
    deferred)."""
    for projection in projections:
        folder = one_pass.get(projection.name) if one_pass else None
        if folder is not None:
            folder.finish(conn)
    create_read_indexes(conn, projections)


def create_read_indexes(conn: SqlConnection, projections: Sequence[Projection]) -> None:
    """Create the ``read_indexes`` of ``projections`` (those a rebuild deferred)."""
    for projection in projections:
        for statement in read_indexes(projection):
            conn.execute(statement)
