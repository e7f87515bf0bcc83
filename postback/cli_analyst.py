"""Analyst and auditor commands of ``postback`` (API.md section 4), on either backend.

``rebuild`` lives in :mod:`postback.cli_rebuild`, ``project`` in
:mod:`postback.cli_projections`, ``verify`` in :mod:`postback.cli_verify`; ``stats`` and
``export`` here, with the argument parsers of all
five and their dispatch. Each opens the log given by ``--db`` / ``--dsn`` (or
``POSTBACK_DB`` / ``POSTBACK_DSN``) through :func:`postback.backend.open_store`, and the
projections where ``serve`` keeps them (:func:`postback.backend.projection_runner`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import errno
import io
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from functools import partial
from typing import Any

import orjson

from eventstore.base import RecordedEvent
from postback import cli_rebuild, cli_verify
from postback.backend import open_store, projection_runner
from postback.cli_progress import silence_stdout
from postback.config import Config
from postback.views import event_fields
from projections.catalog import all_projections
from projections.stats_query import (
    GROUP_KEYS,
    parse_as_of,
    parse_group_by,
    query_stats,
    resolve_tz,
)

COMMANDS = ("rebuild", "verify", "stats", "export", "project")
EXPORT_COLUMNS = (
    "position",
    "stream",
    "version",
    "event_id",
    "type",
    "schema_version",
    "recorded_at",
    "data",
    "metadata",
    "hash",
)
EXPORT_BATCH = 1000
"""Events read per batch by ``export``: memory stays flat however long the log."""


def add_commands(
    commands: Any, database_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add the analyst subcommands to ``commands`` (an argparse subparsers action)."""
    names = ", ".join(p.name for p in all_projections())
    rebuild = commands.add_parser(
        "rebuild",
        help="rebuild projections from the log, with a progress bar",
        description=f"Reset the projections named (default: all of {names}) and apply the"
        " whole log again. Progress on stderr, a summary on stdout.",
    )
    rebuild.add_argument("projections", nargs="*", metavar="PROJECTION")
    rebuild.add_argument(
        "--batch-size",
        type=positive_int,
        default=cli_rebuild.DEFAULT_BATCH_SIZE,
        help="events per batch",
    )
    rebuild.add_argument(
        "--jobs",
        type=positive_int,
        default=cli_rebuild.default_jobs(),
        help="processes (SQLite): the projections are rebuilt in groups, each by its own"
        " process into a file of its own, then swapped in at once (default: one per core;"
        " 1 rebuilds in place)",
    )
    # A child of a parallel rebuild: its group, into a shadow file, up to a position.
    rebuild.add_argument("--shadow", metavar="FILE", help=argparse.SUPPRESS)
    rebuild.add_argument("--until", type=_non_negative, help=argparse.SUPPRESS)
    database_options(rebuild)

    verify = commands.add_parser(
        "verify",
        help="check the log's tamper evidence and every projection against a fresh replay",
        description="(a) Recompute the log's hash chain; print its head (keep it as an"
        " anchor) or the first tampered position. (b) Catch the projections up, replay"
        " every projection from position 0 into a temporary file (PostgreSQL: a temporary"
        " schema, so the role needs CREATE on the database) up to the same position and"
        " compare every table row by row. Exit 0 when all is well, 1 with a report of the"
        " differences.",
    )
    verify.add_argument(
        "--anchor",
        type=_anchor,
        metavar="POSITION:HEXHASH",
        help="a head printed by an earlier verify: proves history up to it was not rewritten",
    )
    verify.add_argument(
        "--limit", type=positive_int, default=5, help="differing rows shown per table (default 5)"
    )
    verify.add_argument(
        "--jobs",
        type=positive_int,
        default=cli_rebuild.default_jobs(),
        help="processes for the replay (SQLite): the projections replayed in groups, as"
        " rebuild does (default: one per core; 1 replays in this process)",
    )
    database_options(verify)

    stats = commands.add_parser(
        "stats",
        help="goal statistics from the log, as of a time",
        description="Catch the projections up, then print counts, unique subscribers and"
        " exact sums per group.",
    )
    stats.add_argument("--as-of", metavar="TIME", help="ISO time; only what the log held then")
    stats.add_argument(
        "--group-by", metavar="KEYS", help=f"comma-separated, of: {', '.join(GROUP_KEYS)}"
    )
    stats.add_argument("--tz", default="UTC", help="IANA time zone of days (default UTC)")
    stats.add_argument("--from", dest="date_from", metavar="DATE", help="first local day")
    stats.add_argument("--to", dest="date_to", metavar="DATE", help="last local day")
    stats.add_argument(
        "--account", type=positive_int, metavar="ID", help="one account (default all)"
    )
    stats.add_argument("--spot", type=positive_int, metavar="ID", help="one spot id")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    database_options(stats)

    export = commands.add_parser(
        "export",
        help="write the log to stdout for analysts (streamed)",
        description="Stream the log as it is when the export starts: one JSON object per"
        " line (jsonl) or CSV with data and metadata as JSON text.",
    )
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument(
        "--after", type=_non_negative, default=0, metavar="POS", help="only positions after POS"
    )
    export.add_argument(
        "--until", metavar="TIME", help="ISO time (UTC if no offset): stop after it"
    )
    database_options(export)

    project = commands.add_parser(
        "project",
        help="run the projection runner as its own process",
        description="Catch the projections up with the log, then follow it until SIGINT or"
        " SIGTERM (exit 0). Use it with `postback serve --no-projections` to run the"
        " projections apart from the service. SQLite: several may run at once on one file"
        " safely. PostgreSQL: one runner per schema applies at a time (the leader: a serve"
        " or a project); another project follows the leader's checkpoints and takes over"
        " when the leader stops (within POSTBACK_LEADER_RETRY seconds).",
    )
    project.add_argument(
        "--batch-size",
        type=positive_int,
        default=cli_rebuild.DEFAULT_BATCH_SIZE,
        help="events per batch",
    )
    project.add_argument(
        "--supervised",
        action="store_true",
        help="as `serve` runs it: positions reached on stdout, stop when stdin closes",
    )
    database_options(project)


MAX_NUMBER = 2**63 - 1
"""The largest number an option takes: what both backends store (a signed 64-bit integer)."""


def _bounded(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < low:
        limit = "must not be negative" if low == 0 else f"must be at least {low}"
        raise argparse.ArgumentTypeError(f"{limit}, got {text}")
    if value > MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_NUMBER}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number, 1 or more (at most :data:`MAX_NUMBER`)."""
    return _bounded(text, 1)


def _non_negative(text: str) -> int:
    return _bounded(text, 0)


def _anchor(text: str) -> tuple[int, bytes]:
    try:
        return cli_verify.parse_anchor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run(args: argparse.Namespace, config: Config) -> int:
    """Run the analyst command of ``args``; its exit status. The log's errors (missing,
    unreachable, failing) are left to the caller (:func:`postback.cli.main`)."""
    try:
        if args.command == "rebuild" and (args.shadow is not None or args.until is not None):
            if args.shadow is None or args.until is None:
                return _error("--shadow and --until go together (a child of rebuild)")
            return cli_rebuild.rebuild_shadow(
                config, args.projections, args.shadow, args.until, args.batch_size
            )
        if args.command == "rebuild":
            return cli_rebuild.rebuild(config, args.projections, args.batch_size, args.jobs)
        if args.command == "verify":
            return cli_verify.verify(config, args.anchor, args.limit, args.jobs)
        if args.command == "project":
            from postback import cli_projections  # the outbox with it: aiohttp

            return cli_projections.project(config, args.batch_size, supervised=args.supervised)
        if args.command == "stats":
            code = stats(config, args)
            sys.stdout.flush()  # here, not at exit: a broken output is handled below
            return code
        if args.command == "export":
            return export(config, args.format, args.after, args.until)
    except BrokenPipeError:
        # The reader went away (``| head``): not an error; keep Python from complaining
        # when it flushes stdout at exit.
        silence_stdout()
        return 0
    except OSError as exc:  # the output cannot be written (a full disk), or a file opened
        silence_stdout()
        where = f"{exc.filename}: " if exc.filename else "cannot write the output: "
        print(f"postback: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"not an analyst command: {args.command}")


def _error(message: str) -> int:
    print(f"postback: {message}", file=sys.stderr)
    return 2


# -- stats ------------------------------------------------------------------------------------


def stats(config: Config, args: argparse.Namespace) -> int:
    """Catch the projections up, print the statistics ``args`` ask for; 2 on bad input."""
    try:
        group_by = parse_group_by(args.group_by)
        as_of = parse_as_of(args.as_of, args.tz) if args.as_of else None
        date_from = _date(args.date_from, "--from")
        date_to = _date(args.date_to, "--to")
        call = partial(
            query_stats,
            account_id=args.account,
            date_from=date_from,
            date_to=date_to,
            spot_id=args.spot,
            group_by=group_by,
            tz=args.tz,
            as_of=as_of,
        )
        resolve_tz(args.tz)  # bad input fails before any work; the query checks the rest
    except ValueError as exc:
        return _error(str(exc))
    try:
        position, rows = asyncio.run(_stats(config, call))
    except ValueError as exc:
        return _error(str(exc))
    if args.json:
        sys.stdout.write(orjson.dumps({"position": position, "rows": rows}).decode() + "\n")
    else:
        print(f"goal statistics of the log up to position {position:,}" + _context(args))
        print_table([*group_by, "count", "unique_subscribers", "sum"], rows)
    return 0


def _context(args: argparse.Namespace) -> str:
    parts = [f"tz {args.tz}"]
    if args.as_of:
        parts.append(f"as of {args.as_of}")
    if args.account is not None:
        parts.append(f"account {args.account}")
    return f" ({', '.join(parts)})"


def _date(text: str | None, flag: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} must be a date (YYYY-MM-DD), got {text!r}") from None


async def _stats(
    config: Config, call: Callable[[Any], list[dict[str, Any]]]
) -> tuple[int, list[dict[str, Any]]]:
    store = await open_store(config, must_exist=True, poll_interval=None)
    try:
        runner = projection_runner(store, config)
        try:
            position = await runner.catch_up()
            rows = await runner.query(call)
        finally:
            await runner.close()
    finally:
        await store.close()
    return position, rows


def print_table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """An aligned text table: numbers right-aligned, text left-aligned."""
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    right = [c in ("count", "unique_subscribers", "sum", "spot") for c in columns]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    print(fmt(list(columns)))
    print("  ".join("-" * w for w in widths))
    for line in cells:
        print(fmt(line))
    if not cells:
        print("(no rows)")


# -- export -----------------------------------------------------------------------------------


def export_record(event: RecordedEvent) -> dict[str, Any]:
    """The exported form of an event (JSON-ready): all of it, as stored."""
    return {
        **event_fields(event),
        "data": event.data,
        "metadata": event.metadata,
        "hash": event.hash.hex(),
    }


def export(config: Config, fmt: str, after: int, until: str | None) -> int:
    """Stream the log after ``after`` (up to ``until``, a time) to stdout; 2 on bad input."""
    try:
        deadline = parse_as_of(until) if until else None
    except ValueError:
        return _error(f"--until must be an ISO 8601 time, got {until!r}")
    count = asyncio.run(_export(config, fmt, after, deadline))
    print(f"postback: exported {count:,} event{'' if count == 1 else 's'}", file=sys.stderr)
    return 0


async def _export(config: Config, fmt: str, after: int, deadline: datetime | None) -> int:
    if sys.stdout is None:
        raise OSError(errno.EBADF, "standard output is closed")
    store = await open_store(config, must_exist=True, poll_interval=None)
    sys.stdout.flush()
    out = sys.stdout.buffer  # bytes in UTF-8, as the log's JSON is, whatever the locale
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n") if fmt == "csv" else None
    count = 0
    try:
        if writer is not None:
            writer.writerow(EXPORT_COLUMNS)
        # The log as it is now: appends made while exporting are left for the next run.
        last = await store.last_position()
        async for batch in store.iter_all(after, EXPORT_BATCH, until=last):
            stop = False
            if deadline is not None and batch[-1].recorded_at > deadline:
                # recorded_at never decreases along the log: cut at the first one after.
                batch = [event for event in batch if event.recorded_at <= deadline]
                stop = True
            if writer is None:
                out.write(b"".join(orjson.dumps(export_record(e)) + b"\n" for e in batch))
            else:
                writer.writerows(_csv_row(event) for event in batch)
                out.write(rows.getvalue().encode())
                rows.seek(0)
                rows.truncate()
            count += len(batch)
            if stop:
                break
        if writer is not None and not count:
            out.write(rows.getvalue().encode())  # the header alone
        out.flush()
    finally:
        await store.close()
    return count


def _csv_row(event: RecordedEvent) -> list[Any]:
    record = export_record(event)
    record["data"] = orjson.dumps(event.data).decode()
    record["metadata"] = orjson.dumps(event.metadata).decode()
    return [record[column] for column in EXPORT_COLUMNS]
