"""Compare projection tables row by row: the live ones against a fresh replay of the log.

``postback verify`` replays every projection into a temporary database (an SQLite file, or
on PostgreSQL a temporary schema: :func:`projections.pg_database.temporary_schema`) up to
the position the live projections have reached, then calls :func:`compare_projections` (or
:func:`compare_databases`). For each projection it lists the tables the projection owns
(:func:`owned_tables`, parsed from the ``CREATE TABLE`` statements of its ``schema_sql``)
and compares them as two sorted streams:

* both sides are read with ``SELECT <key columns>, <other columns> ... ORDER BY`` the same
  columns in the order of :func:`sort_key` (SQLite: ``COLLATE BINARY``; PostgreSQL: text
  ``COLLATE "C"``, ``NULLS FIRST``), so neither table is ever held in memory (PostgreSQL
  streams through a server-side cursor) and the two sides may be of different dialects;
* the *key* is the table's primary key (``PRAGMA table_info``, or ``information_schema``
  on PostgreSQL), or every column when it has none; :func:`diff_sorted` merges the two
  streams and counts rows that are **missing** (in the replay, not live), **extra** (live,
  not in the replay) and **changed** (same key, other values), keeping the first ``limit``
  of each table as examples.

:func:`diff_sorted` works on any two sorted row iterables; only :func:`table_shape` and
:func:`select_sorted` know the dialects.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from projections.database import ProjectionDatabase, SqlConnection, dialect_of
from projections.runner import Projection

DEFAULT_LIMIT: Final = 5
"""Example rows kept per table."""

_CREATE_TABLE: Final = re.compile(
    r"\bCREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:\"((?:[^\"]|\"\")+)\"|`([^`]+)`|\[([^\]]+)\]|([A-Za-z_][\w$]*))",
    re.IGNORECASE,
)
_SHOWN: Final = 80
"""Longest value shown in a report (longer ones are cut)."""

Row = tuple[Any, ...]
DiffKind = Literal["missing", "extra", "changed"]


def owned_tables(projection: Projection) -> list[str]:
    """The tables ``projection`` creates in its ``schema_sql``, in order (no indexes)."""
    names: list[str] = []
    for statement in projection.schema_sql:
        for match in _CREATE_TABLE.finditer(statement):
            quoted, backticked, bracketed, bare = match.groups()
            name = (quoted.replace('""', '"') if quoted else None) or backticked or bracketed
            name = name or bare
            if name not in names:
                names.append(name)
    return names


def quote(identifier: str) -> str:
    """``identifier`` as an SQL quoted identifier."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class TableShape:
    """A table's columns (in declaration order), the columns that identify a row, and
    (PostgreSQL) those of a text type, which sort ``COLLATE "C"``."""

    columns: tuple[str, ...]
    key: tuple[str, ...]
    text: frozenset[str] = frozenset()


_PG_COLUMNS: Final = (
    "SELECT column_name, data_type FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND CAST(table_name AS TEXT) = ?"
    " ORDER BY ordinal_position"
)
_PG_KEY: Final = (
    "SELECT k.column_name FROM information_schema.table_constraints AS c"
    " JOIN information_schema.key_column_usage AS k"
    " ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name"
    " WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema()"
    " AND CAST(c.table_name AS TEXT) = ? ORDER BY k.ordinal_position"
)
_PG_TEXT_TYPES: Final = frozenset({"text", "character varying", "character"})


def table_shape(conn: SqlConnection, table: str) -> TableShape | None:
    """The shape of ``table`` in ``conn``, None if there is no such table."""
    if dialect_of(conn) == "postgres":
        info = conn.execute(_PG_COLUMNS, (table,)).fetchall()
        if not info:
            return None
        columns = tuple(str(name) for name, _ in info)
        key = tuple(str(row[0]) for row in conn.execute(_PG_KEY, (table,)).fetchall())
        text = frozenset(str(name) for name, kind in info if kind in _PG_TEXT_TYPES)
        return TableShape(columns, key or columns, text)
    info = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    if not info:
        return None
    columns = tuple(str(row[1]) for row in info)
    primary = sorted((int(row[5]), str(row[1])) for row in info if row[5])
    return TableShape(columns, tuple(name for _, name in primary) or columns)


def select_sorted(
    conn: SqlConnection, table: str, shape: TableShape, columns: Sequence[str]
) -> Iterator[Sequence[Any]]:
    """The rows of ``table`` (``columns``, in that order), sorted by them as :func:`sort_key`
    orders values; streamed."""
    names = ", ".join(map(quote, columns))
    if dialect_of(conn) == "postgres":
        collate = dict.fromkeys(shape.text, ' COLLATE "C"')
        order = ", ".join(f"{quote(name)}{collate.get(name, '')} NULLS FIRST" for name in columns)
        stream = getattr(conn, "stream")  # noqa: B009 (the PgBridge's)
        sql = f"SELECT {names} FROM {quote(table)} ORDER BY {order}"
        yield from stream(sql)
        return
    order = ", ".join(f"{quote(name)} COLLATE BINARY" for name in columns)
    yield from conn.execute(f"SELECT {names} FROM {quote(table)} ORDER BY {order}")


def sort_key(values: Iterable[Any]) -> tuple[tuple[int, Any], ...]:
    """A Python key that orders rows as SQLite's ``ORDER BY`` (``COLLATE BINARY``) does:
    NULL, then numbers, then text (UTF-8 byte order = code point order), then blobs.
    (PostgreSQL has one type per column; :func:`select_sorted` orders it the same way.)"""
    return tuple(_rank(value) for value in values)


def _rank(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, bytes(value))


@dataclass(frozen=True, slots=True)
class RowDiff:
    """One differing row. ``live``/``fresh`` are the whole rows (None on the side missing)."""

    kind: DiffKind
    columns: tuple[str, ...]
    key_length: int
    live: Row | None
    fresh: Row | None

    def describe(self) -> str:
        row = self.live if self.live is not None else self.fresh
        assert row is not None
        key = ", ".join(
            f"{name}={_show(value)}"
            for name, value in zip(self.columns[: self.key_length], row, strict=False)
        )
        if self.kind == "missing":
            return f"missing row ({key}): in the replay, not in the live table: {self._all(row)}"
        if self.kind == "extra":
            return f"extra row ({key}): in the live table, not in the replay: {self._all(row)}"
        assert self.live is not None
        assert self.fresh is not None
        changes = "; ".join(
            f"{name}: live {_show(old)}, replay {_show(new)}"
            for name, old, new in zip(self.columns, self.live, self.fresh, strict=True)
            if _rank(old) != _rank(new)
        )
        return f"changed row ({key}): {changes}"

    def _all(self, row: Row) -> str:
        return (
            "{" + ", ".join(f"{n}={_show(v)}" for n, v in zip(self.columns, row, strict=True)) + "}"
        )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


@dataclass(slots=True)
class TableDiff:
    """The comparison of one table. ``problem`` is set when rows could not be compared."""

    projection: str
    table: str
    live_rows: int = 0
    fresh_rows: int = 0
    missing: int = 0
    extra: int = 0
    changed: int = 0
    examples: list[RowDiff] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and not (self.missing or self.extra or self.changed)

    def summary(self) -> str:
        if self.problem is not None:
            return f"{self.table}: {self.problem}"
        if self.ok:
            return f"{self.table}: {self.live_rows:,} rows, equal"
        counts = ", ".join(
            f"{count:,} {kind}"
            for kind, count in (
                ("missing", self.missing),
                ("extra", self.extra),
                ("changed", self.changed),
            )
            if count
        )
        return (
            f"{self.table}: {counts} (live {self.live_rows:,} rows, "
            f"replay {self.fresh_rows:,} rows)"
        )


def diff_sorted(
    diff: TableDiff,
    columns: Sequence[str],
    key_length: int,
    live: Iterable[Sequence[Any]],
    fresh: Iterable[Sequence[Any]],
    limit: int = DEFAULT_LIMIT,
) -> TableDiff:
    """Merge two row streams sorted by :func:`sort_key` of their first ``key_length``
    columns (then the rest), counting into ``diff``; returns it. Holds two rows at a time."""
    names = tuple(columns)

    def note(kind: DiffKind, live_row: Row | None, fresh_row: Row | None) -> None:
        setattr(diff, kind, getattr(diff, kind) + 1)
        if sum(1 for example in diff.examples if example.kind == kind) < limit:
            diff.examples.append(RowDiff(kind, names, key_length, live_row, fresh_row))

    live_rows = _checked(live, key_length, diff, "live")
    fresh_rows = _checked(fresh, key_length, diff, "replay")
    a, b = next(live_rows, None), next(fresh_rows, None)
    while a is not None or b is not None:
        if b is None or (a is not None and _before(a[0], b[0])):
            assert a is not None
            note("extra", a[1], None)
            a = next(live_rows, None)
        elif a is None or _before(b[0], a[0]):
            note("missing", None, b[1])
            b = next(fresh_rows, None)
        else:
            # Equal rows (the rule) are equal for sort_key too: it is only needed otherwise.
            if a[1] != b[1] and sort_key(a[1]) != sort_key(b[1]):
                note("changed", a[1], b[1])
            a, b = next(live_rows, None), next(fresh_rows, None)
    return diff


def _before(x: Row, y: Row) -> bool:
    """Whether ``x`` sorts before ``y`` as :func:`sort_key` orders them. Python's own
    comparison gives that order where it can compare the values (numbers with numbers,
    text with text, bytes with bytes: one type per column, the rule), at a fraction of the
    cost of building two keys per row; :func:`sort_key` decides the rest (NULL, mixed
    types), where Python refuses."""
    try:
        return x < y
    except TypeError:
        return sort_key(x) < sort_key(y)


def _checked(
    rows: Iterable[Sequence[Any]], key_length: int, diff: TableDiff, side: str
) -> Iterator[tuple[Row, Row]]:
    """``(key values, row)`` pairs; counts the rows; raises if the stream is not sorted by
    key."""
    previous: Row | None = None
    for row in rows:
        values = tuple(row)
        key = values[:key_length]
        if previous is not None and _before(key, previous):
            raise ValueError(f"the {side} rows of {diff.table} are not in key order")
        previous = key
        if side == "live":
            diff.live_rows += 1
        else:
            diff.fresh_rows += 1
        yield key, values


def compare_table(
    live: SqlConnection,
    fresh: SqlConnection,
    projection: str,
    table: str,
    limit: int = DEFAULT_LIMIT,
) -> TableDiff:
    """Compare ``table`` in the two databases (see the module docstring)."""
    diff = TableDiff(projection, table)
    live_shape, fresh_shape = table_shape(live, table), table_shape(fresh, table)
    if live_shape is None or fresh_shape is None:
        if live_shape is not None or fresh_shape is not None:
            where = "live projections" if live_shape is None else "replay"
            diff.problem = f"the table is missing from the {where}"
        return diff
    if set(live_shape.columns) != set(fresh_shape.columns):
        diff.problem = (
            f"columns differ: live ({', '.join(live_shape.columns)}),"
            f" replay ({', '.join(fresh_shape.columns)})"
        )
        return diff
    key = fresh_shape.key
    columns = (*key, *(name for name in fresh_shape.columns if name not in key))
    try:
        return diff_sorted(
            diff,
            columns,
            len(key),
            select_sorted(live, table, live_shape, columns),
            select_sorted(fresh, table, fresh_shape, columns),
            limit=limit,
        )
    except ValueError as exc:
        diff.problem = str(exc)
        return diff


@dataclass(slots=True)
class ProjectionDiff:
    """The comparison of one projection: its checkpoints and every table it owns."""

    name: str
    live_checkpoint: int | None
    fresh_checkpoint: int | None
    tables: list[TableDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.live_checkpoint == self.fresh_checkpoint and all(t.ok for t in self.tables)


def read_checkpoints(conn: SqlConnection) -> dict[str, int]:
    """``projection_checkpoints`` as a dict ({} if the table does not exist)."""
    if table_shape(conn, "projection_checkpoints") is None:
        return {}
    rows = conn.execute("SELECT name, position FROM projection_checkpoints").fetchall()
    return {str(name): int(position) for name, position in rows}


def compare_projections(
    live: SqlConnection,
    fresh: SqlConnection,
    projections: Sequence[Projection],
    limit: int = DEFAULT_LIMIT,
) -> list[ProjectionDiff]:
    """Compare every table of every projection, and their checkpoints.

    Run each side in one read transaction (``BEGIN``) so that it is one snapshot (as
    :func:`compare_databases` does). Blocking: call it from a worker thread.
    """
    live_checkpoints: Mapping[str, int] = read_checkpoints(live)
    fresh_checkpoints: Mapping[str, int] = read_checkpoints(fresh)
    result = []
    for projection in projections:
        diff = ProjectionDiff(
            projection.name,
            live_checkpoints.get(projection.name),
            fresh_checkpoints.get(projection.name),
        )
        for table in owned_tables(projection):
            diff.tables.append(compare_table(live, fresh, projection.name, table, limit))
        result.append(diff)
    return result


async def compare_databases(
    live: ProjectionDatabase,
    fresh: ProjectionDatabase,
    projections: Sequence[Projection],
    limit: int = DEFAULT_LIMIT,
) -> list[ProjectionDiff]:
    """:func:`compare_projections` on a snapshot of each database, in a worker thread."""
    async with live.snapshot() as live_conn, fresh.snapshot() as fresh_conn:
        return await asyncio.to_thread(
            compare_projections, live_conn, fresh_conn, projections, limit
        )


def format_report(diffs: Sequence[ProjectionDiff]) -> list[str]:
    """Readable lines: per projection ``ok`` or what differs, with example rows."""
    lines: list[str] = []
    for diff in diffs:
        if diff.ok:
            tables = "; ".join(t.summary() for t in diff.tables)
            lines.append(f"  {diff.name}: ok ({tables})")
            continue
        lines.append(f"  {diff.name}: DIFFERS from a fresh replay")
        if diff.live_checkpoint != diff.fresh_checkpoint:
            lines.append(
                f"    checkpoint: live {diff.live_checkpoint}, replay {diff.fresh_checkpoint}"
            )
        for table in diff.tables:
            mark = "ok  " if table.ok else "DIFF"
            lines.append(f"    {mark} {diff.name}.{table.summary()}")
            lines.extend(f"         {example.describe()}" for example in table.examples)
            shown = len(table.examples)
            total = table.missing + table.extra + table.changed
            if total > shown:
                lines.append(f"         ... and {total - shown:,} more")
    return lines
