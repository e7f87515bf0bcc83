"""``postback migrate-to --dsn ...``: copy the SQLite log into PostgreSQL, hashes verified.

The copy is the stored rows themselves (ids, positions, versions, recorded times, the exact
JSON bytes and their hashes), so the PostgreSQL log is the *same* log: its hash chain and
head equal the SQLite one, and an anchor kept from an earlier ``postback verify`` still
holds. In order:

1. The SQLite log is verified first; a tampered log is not copied (exit 1), and the
   target is not even opened.
2. The target may be empty, or hold a prefix of this very log (an interrupted migration):
   then the copy resumes after it. It may also hold the whole of this log and more (a
   ``serve --dsn`` has appended since): then there is nothing to copy. Its own chain is
   verified first. A target holding anything else is refused (exit 1), nothing written.
3. Rows go over in batches, each one transaction; PostgreSQL refuses a row whose hash does
   not chain (``import_raw``). Only the verified rows are copied: appends made to the
   SQLite log meanwhile (a ``serve`` still running on it) are left for the next run.
4. The target is verified afterwards and its event at the source's head compared with it.
5. The projections are caught up in the target's schema (as ``serve`` keeps them there),
   unless ``--no-projections``: then the first ``serve`` (or ``postback rebuild``) on
   PostgreSQL builds them from the log.

Exit 0 when done (also when there was nothing left to copy), 1 when refused or when the
copy does not verify, 2 for a usage error, a missing SQLite file or an unreachable target,
130 when interrupted (what was copied is kept and verified by the next run, which resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

from eventstore.base import EventStore, VerifyReport
from eventstore.sqlite import SQLiteEventStore
from postback.backend import describe, open_store, projection_runner, require_log_file
from postback.cli_progress import LogView, ProgressBar
from postback.config import Config

COMMAND = "migrate-to"
DEFAULT_BATCH = 1000


class MigrationRefused(Exception):
    """The copy cannot be made safely, or did not verify; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """What :func:`migrate_to` did: events ``copied`` by this run after the ``start`` the
    target held, the source's verified ``head``, and the projections' position in the
    target (None with ``--no-projections``)."""

    start: int
    copied: int
    head: VerifyReport
    target_position: int
    projections: int | None


def add_command(commands: Any, positive: Callable[[str], int]) -> None:
    """Add ``migrate-to`` to ``commands`` (an argparse subparsers action); ``positive`` is
    the argument type of a count of at least 1."""
    migrate = commands.add_parser(
        COMMAND,
        help="copy the SQLite log into PostgreSQL, hashes verified (resumable)",
        description="Verify the SQLite log, copy its stored rows as they are into the"
        " PostgreSQL schema of the DSN's search_path (created beforehand), verify the copy"
        " (same head hash) and catch the projections up there. An interrupted run resumes;"
        " a run with nothing left to copy does nothing. Refused (exit 1) when the SQLite log"
        " fails verification or the target holds another log; exit 2 when either cannot be"
        " opened.",
    )
    migrate.add_argument(
        "--dsn", help="the PostgreSQL DSN to copy into (or POSTBACK_DSN); its schema must exist"
    )
    migrate.add_argument(
        "--db", help="the SQLite file to copy (default ./postback.db, or POSTBACK_DB)"
    )
    migrate.add_argument(
        "--batch-size",
        type=positive,
        default=DEFAULT_BATCH,
        help=f"events per transaction (default {DEFAULT_BATCH})",
    )
    migrate.add_argument(
        "--no-projections",
        action="store_true",
        help="do not build the projections in PostgreSQL (the first serve or rebuild will)",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``migrate-to`` for the parsed ``args``: the source is ``config.db_path``, the
    target ``config.dsn``. Errors opening either propagate (the CLI exits 2)."""
    if config.dsn is None:
        print(
            "postback: migrate-to needs --dsn (or POSTBACK_DSN): where to copy to", file=sys.stderr
        )
        return 2
    source = dataclasses.replace(config, dsn=None)
    try:
        asyncio.run(
            migrate_to(
                source, config, batch_size=args.batch_size, projections=not args.no_projections
            )
        )
    except MigrationRefused as exc:
        print(f"postback: migrate-to refused: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "postback: migrate-to interrupted; what was copied is kept:"
            " run it again to verify it and resume",
            file=sys.stderr,
        )
        return 130
    return 0


def _finding(report: VerifyReport) -> str:
    found = report.finding
    if found is None:
        return "no tampering found"
    return f"{found.kind.value} at position {found.position} ({found.detail})"


def _head(report: VerifyReport) -> str:
    return f"position {report.head_position}, hash {report.head_hash.hex()}"


async def migrate_to(
    source: Config, target: Config, *, batch_size: int = DEFAULT_BATCH, projections: bool = True
) -> Migration:
    """Copy the SQLite log of ``source`` into the PostgreSQL log of ``target`` (its ``dsn``).

    Progress on stderr, a summary on stdout. Raises :class:`MigrationRefused` (nothing
    written when refused before copying), :class:`~postback.backend.MissingLogError` or
    :class:`~postback.backend.LogUnavailableError` when a log cannot be opened.
    """
    require_log_file(source)
    sqlite = await SQLiteEventStore.open(source.db_path, poll_interval=None)
    try:
        checked = await sqlite.verify()
        if not checked.ok:
            raise MigrationRefused(
                f"the SQLite log {source.db_path} fails verification: {_finding(checked)};"
                " not copied (see `postback verify`)"
            )
        print(
            f"source: {source.db_path}: {checked.checked:,} events, hash chain intact,"
            f" head {_head(checked)}"
        )
        store = await open_store(target)
        try:
            return await _copy(sqlite, store, checked, target, batch_size, projections)
        finally:
            await store.close()
    finally:
        await sqlite.close()


async def _copy(
    sqlite: SQLiteEventStore,
    store: EventStore,
    checked: VerifyReport,
    target: Config,
    batch_size: int,
    projections: bool,
) -> Migration:
    """Steps 2 to 5 of the module docstring, into the open PostgreSQL ``store``."""
    from eventstore.postgres import PostgresEventStore

    assert isinstance(store, PostgresEventStore)  # target.dsn is set
    where = describe(target)
    head = checked.head_position
    before = await store.last_position()
    start = await _resume_point(sqlite, store, checked)
    if before == 0:
        held = "was empty"
    elif before <= head:
        held = f"held {_events(before)} of this log"
    else:
        held = f"held {_events(before)}, of which the first {head:,} are this log's"
    started = time.perf_counter()
    copied = 0
    if start < head:
        bar = ProgressBar("migrate-to", start=start)
        async for batch in sqlite.iter_raw(after=start, batch_size=batch_size):
            batch = [row for row in batch if row.position <= head]
            if not batch:
                break
            await store.import_raw(batch)
            copied += len(batch)
            bar.update(start + copied, head)
            if batch[-1].position >= head:
                break
        bar.finish(start + copied, head)
    seconds = time.perf_counter() - started
    landed = await store.verify()
    if not landed.ok or await _hash_at(store, head) != checked.head_hash:
        raise MigrationRefused(
            f"the copy in {where} does not verify: source head {_head(checked)},"
            f" target head {_head(landed)}; {_finding(landed)}"
        )
    rate = copied / max(seconds, 1e-9)
    if copied:
        done = f"copied {copied:,} events in {seconds:.1f} s ({rate:,.0f} events/s)"
    else:
        done = "copied 0 events: nothing left to copy"
    print(f"target: {where}: {held}; {done}")
    beyond = landed.head_position - head
    print(
        f"target: verified, head {_head(landed)}"
        + (f" ({_events(beyond)} appended there after this log's head)" if beyond else "")
        + "; this log's head is the same there"
    )
    grown = await sqlite.last_position() - head
    if grown > 0:
        print(
            f"postback: the SQLite log has {grown:,} events more than when it was verified"
            " (a serve still writing to it?): stop it and run migrate-to again to copy them",
            file=sys.stderr,
        )
    position: int | None = None
    if projections:
        position = await _catch_up_projections(store, target)
    else:
        print(
            "projections: not built (--no-projections); the first `postback serve --dsn`"
            " or `postback rebuild --dsn` builds them from the log"
        )
    print("migrate-to: OK; `postback serve --dsn` with this DSN now serves the log")
    return Migration(start, copied, checked, landed.head_position, position)


def _events(count: int) -> str:
    return f"{count:,} event" + ("" if count == 1 else "s")


async def _hash_at(store: EventStore, position: int) -> bytes:
    """The hash of the event at ``position`` (32 zero bytes for position 0: an empty
    log's head), or b"" when there is none."""
    if position == 0:
        return bytes(32)
    found = await store.read_all(position - 1, 1)
    return found[0].hash if found and found[0].position == position else b""


async def _resume_point(sqlite: SQLiteEventStore, store: EventStore, checked: VerifyReport) -> int:
    """Where to continue: 0 for an empty target; the target's head if it holds a prefix of
    the verified source; the source's head if it holds all of it (and maybe more).
    Raises :class:`MigrationRefused` otherwise, and when the target fails verification."""
    if await store.last_position() == 0:
        return 0
    theirs = await store.verify()
    if not theirs.ok:
        raise MigrationRefused(
            f"the target holds a log that fails verification: {_finding(theirs)};"
            " not copied (see `postback verify --dsn`)"
        )
    if theirs.head_position <= checked.head_position:
        if await _hash_at(sqlite, theirs.head_position) == theirs.head_hash:
            return theirs.head_position
    elif await _hash_at(store, checked.head_position) == checked.head_hash:
        return checked.head_position
    held = theirs.head_position
    raise MigrationRefused(
        f"the target already holds {held:,} events that are not"
        f" {'this log' if held > checked.head_position else f'the first {held:,} of this log'}:"
        " not copied (migrate into an empty schema, or the one this log was copied to)"
    )


async def _catch_up_projections(store: EventStore, target: Config) -> int:
    """Apply the log to the projections in the target's schema, with a progress bar."""
    total = await store.last_position()
    bar: ProgressBar | None = None

    def progress(position: int, _head: int) -> None:
        if bar is not None:
            bar.update(position, total)

    runner = projection_runner(LogView(store, on_progress=progress).as_store(), target)
    try:
        await runner.open()  # the checkpoints: where a resumed migration's projections are
        bar = ProgressBar("projections", start=runner.position)
        position = await runner.catch_up()
        if position > bar.start:
            bar.finish(position, max(total, position))
        print(f"projections: caught up at position {position:,} in {runner.database.describe()}")
    finally:
        await runner.close()
    return position
