"""``postback verify``: the log's tamper evidence, and every projection against a fresh replay.

The same on both backends: the log's hash chain is recomputed (``store.verify``, with an
anchor when given); the live projections are caught up, one snapshot of them is taken, and
every projection is replayed from position 0 up to that snapshot's checkpoint into an empty
database of the same kind (a temporary SQLite file, or a temporary PostgreSQL schema:
:func:`postback.backend.scratch_projection_database`), then compared table by table, row by
row (:func:`projections.verify.compare_projections`). With ``--jobs`` above 1 (the
default on a machine with several cores) the replay runs in child processes, a group of
projections each, into shadows as ``postback rebuild`` builds them (:mod:`postback.shadows`,
:func:`postback.cli_rebuild.build_shadows`); the comparison is the same. Results on
stdout; exit 0 when all is well, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from eventstore.base import EventStore, VerifyReport
from postback.backend import open_store, projection_runner, scratch_projection_database
from postback.cli_progress import LogView, silence_stdout
from postback.cli_rebuild import DEFAULT_BATCH_SIZE, build_shadows
from postback.config import Config
from postback.shadows import shadow_database, shadow_places
from projections.catalog import all_projections
from projections.database import SqlConnection
from projections.runner import ProjectionRunner
from projections.shadow import lock_for_reading, plan_shards
from projections.verify import (
    DEFAULT_LIMIT,
    ProjectionDiff,
    compare_projections,
    format_report,
    read_checkpoints,
)


@dataclass(frozen=True, slots=True)
class Verification:
    """What :func:`check` found: the log's report, the projections compared at
    ``position`` (the live snapshot's), and how far the replay reached (less than
    ``position`` when the live projections are ahead of the log)."""

    log: VerifyReport
    position: int
    replayed: int
    diffs: list[ProjectionDiff]


class ReplayFailedError(RuntimeError):
    """A replay child failed: the projections could not be compared."""


async def check(
    config: Config, anchor: tuple[int, bytes] | None, limit: int = DEFAULT_LIMIT, jobs: int = 1
) -> Verification:
    """Verify the configured log and its projections (see the module docstring).

    ``jobs`` above 1 (as ``postback verify`` runs it on a machine with several cores):
    the replay is split as ``postback rebuild`` splits a rebuild, each group replayed by
    a child process into a shadow of its own (a file, or a schema)
    (:func:`postback.cli_rebuild.build_shadows`), and each group compared with its shadow.
    """
    projections = all_projections()
    in_children = jobs > 1
    store = await open_store(config, must_exist=True, poll_interval=None)
    # The hash chain is checked in a thread and a connection of its own: while children
    # replay, at the same time; otherwise first (one Python thread at a time).
    verifying = asyncio.ensure_future(store.verify(anchor))
    try:
        if not in_children:
            await asyncio.wait({verifying})
        live = projection_runner(store, config)
        try:
            await live.catch_up()
            # One snapshot of the live projections: a runner elsewhere (serve, project) may
            # keep applying; we compare what this snapshot holds, at its checkpoint.
            async with live.database.snapshot() as live_conn:
                if live.database.dialect == "postgres":  # no swap until the comparison ends
                    await asyncio.to_thread(lock_for_reading, live_conn, projections)
                stored = await asyncio.to_thread(read_checkpoints, live_conn)
                position = min(stored.get(p.name, 0) for p in projections)
                if in_children:
                    replayed, diffs = await _replay_in_children(
                        config, live_conn, position, jobs, limit
                    )
                else:
                    replayed, diffs = await _replay_here(config, store, live_conn, position, limit)
        finally:
            await live.close()
        report = await verifying
    finally:
        verifying.cancel()
        await asyncio.gather(verifying, return_exceptions=True)
        await store.close()
    return Verification(report, position, replayed, diffs)


async def _replay_here(
    config: Config, store: EventStore, live_conn: SqlConnection, position: int, limit: int
) -> tuple[int, list[ProjectionDiff]]:
    projections = all_projections()
    async with scratch_projection_database(config) as scratch:
        view = LogView(store, until=position)
        fresh = ProjectionRunner(view.as_store(), projections, database=scratch)
        try:
            replayed = await fresh.catch_up()
            async with scratch.snapshot() as fresh_conn:
                diffs = await asyncio.to_thread(
                    compare_projections, live_conn, fresh_conn, projections, limit
                )
        finally:
            await fresh.close()
    return replayed, diffs


async def _replay_in_children(
    config: Config, live_conn: SqlConnection, position: int, jobs: int, limit: int
) -> tuple[int, list[ProjectionDiff]]:
    """Replay in shadows, a group per child; each group is compared with the live
    projections as soon as its child is done, while the others still replay."""
    projections = all_projections()
    order = {projection.name: index for index, projection in enumerate(projections)}
    groups = plan_shards(projections, jobs)
    built: asyncio.Queue[int | None] = asyncio.Queue()
    skipping = asyncio.Event()  # a child failed (or this was cancelled): compare no more
    reached: list[int] = []
    diffs: list[ProjectionDiff] = []
    async with shadow_places(config, len(groups), "verify") as places:
        shards = list(zip(places, groups, strict=True))

        async def compare_as_built() -> None:
            while (index := await built.get()) is not None:
                if skipping.is_set():
                    continue
                shadow, group = shards[index]
                fresh = shadow_database(config, shadow)
                try:
                    async with fresh.snapshot() as fresh_conn:
                        stored = await asyncio.to_thread(read_checkpoints, fresh_conn)
                        reached.extend(stored.get(p.name, 0) for p in group)
                        diffs.extend(
                            await asyncio.to_thread(
                                compare_projections, live_conn, fresh_conn, group, limit
                            )
                        )
                finally:
                    await fresh.close()

        comparing = asyncio.ensure_future(compare_as_built())
        building = asyncio.ensure_future(
            build_shadows(
                config, shards, position, DEFAULT_BATCH_SIZE, lambda *_: None, built.put_nowait
            )
        )
        failed: str | None = None
        try:
            await asyncio.wait({building, comparing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not building.done():  # the comparison failed, or this is being cancelled
                building.cancel()  # stops and reaps the children
                await asyncio.gather(building, return_exceptions=True)
            if building.cancelled() or building.exception() is not None:
                skipping.set()
            else:
                failed = building.result()
                if failed:
                    skipping.set()
            # The comparison under way (in a thread, on live_conn) finishes before anything
            # else happens; its error, if it had one, is raised here.
            built.put_nowait(None)
            await comparing
        error = building.exception()
        if error is not None:
            raise error
        if failed:
            raise ReplayFailedError(failed)
    return min([position, *reached]), sorted(diffs, key=lambda diff: order[diff.name])


def _print_log_report(report: VerifyReport) -> None:
    if report.finding is None:
        head = f"{report.head_position}:{report.head_hash.hex()}"
        print(f"log: ok, {report.checked:,} events, hash chain intact")
        print(f"log: head position {report.head_position}, hash {report.head_hash.hex()}")
        if report.head_position:  # an empty log has no history to anchor
            print(f"log: keep it as an anchor for later checks: --anchor {head}")
    else:
        finding = report.finding
        print(f"log: TAMPERED at position {finding.position}: {finding.kind.value}")
        print(f"log: {finding.detail}")


def verify(
    config: Config, anchor: tuple[int, bytes] | None, limit: int = DEFAULT_LIMIT, jobs: int = 1
) -> int:
    """Print the report; 0 when the log and every projection check out, 1 otherwise."""
    try:
        found = asyncio.run(check(config, anchor, limit, jobs))
    except ReplayFailedError as exc:
        print(f"postback: verify could not replay the projections: {exc}", file=sys.stderr)
        return 1
    report, position, replayed = found.log, found.position, found.replayed
    ok = report.ok and all(diff.ok for diff in found.diffs) and replayed == position
    try:
        _print_report(found)
        sys.stdout.flush()  # here, not at exit: a reader that went away is found now
    except BrokenPipeError:
        # The reader went away (``| head``): the verdict stands, whatever it read of it.
        silence_stdout()
    return 0 if ok else 1


def _print_report(found: Verification) -> None:
    report, position, replayed = found.log, found.position, found.replayed
    _print_log_report(report)
    print(f"projections: compared with a fresh replay of positions 1..{position:,}")
    if replayed != position:
        print(f"projections: the replay reached only position {replayed:,} of the log")
    for line in format_report(found.diffs):
        print(line)
    bad = [diff.name for diff in found.diffs if not diff.ok]
    if report.ok and not bad and replayed == position:
        print("verify: OK")
        return
    problems = []
    if report.finding is not None:
        problems.append(f"log tampered at position {report.finding.position}")
    if bad:
        problems.append(f"projections differ: {', '.join(bad)}")
    if replayed != position:
        problems.append(f"projections are ahead of the log ({position:,} > {replayed:,})")
    print(f"verify: FAILED ({'; '.join(problems)})")


def parse_anchor(text: str) -> tuple[int, bytes]:
    """``POSITION:HEXHASH`` -> ``(position, hash)``; ValueError otherwise."""
    position, sep, digest = text.partition(":")
    try:
        if not sep:
            raise ValueError
        anchor = (int(position), bytes.fromhex(digest))
    except ValueError:
        raise ValueError(f"an anchor is POSITION:HEXHASH, got {text!r}") from None
    if anchor[0] < 1 or len(anchor[1]) != 32:  # a position of the log, a SHA-256
        raise ValueError(
            f"an anchor is POSITION:HEXHASH (a position from 1, 64 hex digits), got {text!r}"
        )
    return anchor
