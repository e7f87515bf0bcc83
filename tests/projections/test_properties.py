"""Property: however the log is split into batches and restarts, the rows are the same,
on either projection database.

Hypothesis and pytest fixtures do not mix per example, so each example opens its stores in
a fresh temporary directory, its projection databases in a child scope of ``projection_db``,
and runs its own event loop (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.base import NewEvent
from eventstore.sqlite import SQLiteEventStore
from projections.postback_log import PostbackLogProjection, list_postbacks
from projections.runner import ProjectionRunner
from tests.projections.backends import Scope, examples
from tests.projections.helpers import Recording, postback_meta, recorded

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    derandomize=True,  # the same examples on every run
    suppress_health_check=[HealthCheck.too_slow],
)

REQUEST_IDS = [f"req-{i}" for i in range(6)]  # few: duplicates across events are common

postbacks = st.builds(
    postback_meta,
    st.sampled_from(REQUEST_IDS),
    status=st.sampled_from([200, 400, 401, 404]),
    clickid=st.none() | st.sampled_from(["A", "B"]),
    goal=st.none() | st.sampled_from(["reg", "dep"]),
)
new_events = st.builds(
    NewEvent,
    st.sampled_from(["GoalReached", "PostbackRejected", "PostbackRepeated", "Other"]),
    st.fixed_dictionaries({"account_id": st.none() | st.integers(1, 3)}),
    st.just({}) | postbacks,
    event_id=st.uuids(),  # the default would draw from `random`, which hypothesis refuses
)
STREAMS = ["subscriber-1", "postback-log", "accounts"]


@st.composite
def appends(draw: st.DrawFn) -> list[tuple[str, list[NewEvent]]]:
    """A log as a list of appends: (stream, events), every event id unique."""
    events = draw(st.lists(new_events, min_size=1, max_size=30, unique_by=lambda e: e.event_id))
    log: list[tuple[str, list[NewEvent]]] = []
    while events:
        size = draw(st.integers(1, 4))
        log.append((draw(st.sampled_from(STREAMS)), events[:size]))
        events = events[size:]
    return log


Snapshot = tuple[list[tuple[Any, ...]], list[dict[str, Any]], dict[str, int]]


async def snapshot(runner: ProjectionRunner) -> Snapshot:
    rows = await list_postbacks(runner, account_id=None, limit=10_000)
    return await recorded(runner), rows, dict(runner.checkpoints)


def projections() -> list[Any]:
    return [Recording(), PostbackLogProjection()]


async def all_at_once(
    scope: Scope, workdir: Path, log: list[tuple[str, list[NewEvent]]]
) -> Snapshot:
    store = await SQLiteEventStore.open(workdir / "whole.db", poll_interval=None)
    try:
        for stream, events in log:
            await store.append(stream, events)
        runner = scope.runner(store, projections(), place="whole", batch_size=10_000)
        try:
            await runner.catch_up()
            return await snapshot(runner)
        finally:
            await runner.close()
    finally:
        await store.close()


async def in_pieces(
    scope: Scope, workdir: Path, log: list[tuple[str, list[NewEvent]]], batch_sizes: list[int]
) -> Snapshot:
    """After each append, a new runner (a restart) resumes from the stored checkpoints."""
    store = await SQLiteEventStore.open(workdir / "split.db", poll_interval=None)
    try:
        for i, (stream, events) in enumerate(log):
            await store.append(stream, events)
            last = i == len(log) - 1
            # the projections are not always run together: their checkpoints diverge, so
            # batches start before some checkpoints (the runner applies only what is past)
            chosen: list[Any] = []
            if i % 2 == 0 or last:
                chosen.append(Recording())
            if i >= len(log) // 2:
                chosen.append(PostbackLogProjection())
            if not chosen:
                continue
            size = batch_sizes[i % len(batch_sizes)]
            runner = scope.runner(store, chosen, place="split", batch_size=size)
            try:
                await runner.catch_up()
                if last:
                    return await snapshot(runner)
            finally:
                await runner.close()
    finally:
        await store.close()
    raise AssertionError("unreachable: the log is not empty")


def test_batch_splits_and_restarts_do_not_change_the_rows(projection_db: Scope) -> None:
    @examples(PROPERTY_SETTINGS, projection_db, postgres=15)
    @given(log=appends(), batch_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5))
    def check(log: list[tuple[str, list[NewEvent]]], batch_sizes: list[int]) -> None:
        with (
            projection_db.child() as scope,
            tempfile.TemporaryDirectory(prefix="projections-prop-") as workdir,
        ):
            asyncio.run(same_rows(scope, Path(workdir), log, batch_sizes))

    check()


async def same_rows(
    scope: Scope, workdir: Path, log: list[tuple[str, list[NewEvent]]], batch_sizes: list[int]
) -> None:
    async with asyncio.timeout(30):
        expected = await all_at_once(scope, workdir, log)
        assert await in_pieces(scope, workdir, log, batch_sizes) == expected
        total = sum(len(events) for _, events in log)
        assert expected[2] == {"recording": total, "postback_index": total}
        # One entry per run of events with the same request id (a request's events are
        # adjacent in the log), whatever the batches.
        request_ids: list[str] = []
        for _, events in log:
            for event in events:
                if (
                    event.metadata
                    and event.metadata["postback"]["request_id"] not in (request_ids[-1:])
                ):
                    request_ids.append(event.metadata["postback"]["request_id"])
        assert [row["request_id"] for row in expected[1]] == request_ids
