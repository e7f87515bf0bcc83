"""Property-based tests of the contract (hypothesis), run against every backend.

Hypothesis and pytest fixtures do not mix per example, so each example opens a store in
a fresh temporary directory and runs its own event loop (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.base import NO_STREAM, AppendResult, EventStore, ExpectedVersion, NewEvent
from eventstore.errors import ConcurrencyError
from tests.eventstore.backends import BACKENDS
from tests.eventstore.helpers import assert_chain, assert_gap_free, read_everything

T = TypeVar("T")

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    derandomize=True,  # the same examples on every run
    suppress_health_check=[HealthCheck.too_slow],
)

backends = pytest.mark.parametrize("backend", sorted(BACKENDS))


def run_with_store(backend: str, body: Callable[[EventStore], Awaitable[T]]) -> T:
    """Run ``body(store)`` on a fresh, empty store of ``backend`` in a new event loop."""

    async def main(workdir: Path) -> T:
        async with asyncio.timeout(30):  # a hanging backend fails the example
            store = await BACKENDS[backend](workdir, None)
            try:
                return await body(store)
            finally:
                await store.close()

    with tempfile.TemporaryDirectory(prefix="eventstore-prop-") as workdir:
        return asyncio.run(main(Path(workdir)))


# -- strategies ---------------------------------------------------------------------------

# Any Unicode scalar value in JSON data (not lone surrogates, which are not text).
text = st.text(st.characters(codec="utf-8"), max_size=20)
# Stream names and types are text columns: no NUL (PostgreSQL's text refuses it).
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(text, json_values, max_size=5)

new_events = st.builds(
    NewEvent,
    type=names,
    data=json_objects,
    metadata=json_objects,
    event_id=st.uuids(),
    schema_version=st.integers(min_value=1, max_value=5),
)


# -- (a) what is appended reads back equal -------------------------------------------------


@backends
@PROPERTY_SETTINGS
@given(
    appends=st.lists(
        st.tuples(names, st.lists(new_events, min_size=1, max_size=4)), min_size=1, max_size=5
    )
)
def test_appended_events_read_back_equal(
    backend: str, appends: list[tuple[str, list[NewEvent]]]
) -> None:
    async def body(store: EventStore) -> None:
        for stream, events in appends:
            await store.append(stream, events)
        stored = await read_everything(store)
        sent = [(stream, event) for stream, events in appends for event in events]
        assert len(stored) == len(sent)
        for (stream, event), got in zip(sent, stored, strict=True):
            assert got.stream == stream
            assert got.event_id == event.event_id
            assert got.type == event.type
            assert got.schema_version == event.schema_version
            assert got.data == event.data
            assert got.metadata == event.metadata
            assert await store.get_event(event.event_id) == got
        assert_gap_free(stored)
        assert_chain(stored)
        assert (await store.verify()).ok

    run_with_store(backend, body)


# -- (b) positions strictly increase with no gaps -------------------------------------------

# Rounds of appends; the appends of one round run concurrently: (stream index, batch size).
rounds = st.lists(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 5)), min_size=1, max_size=6),
    min_size=1,
    max_size=5,
)


@backends
@PROPERTY_SETTINGS
@given(plan=rounds)
def test_positions_are_gap_free_across_random_batches_and_streams(
    backend: str, plan: list[list[tuple[int, int]]]
) -> None:
    async def body(store: EventStore) -> None:
        results: list[tuple[list[NewEvent], AppendResult]] = []
        for round_ in plan:
            batches = [[NewEvent("E", {"i": i}) for i in range(size)] for _, size in round_]
            landed = await asyncio.gather(
                *(
                    store.append(f"s{stream}", batch)
                    for (stream, _), batch in zip(round_, batches, strict=True)
                )
            )
            results.extend(zip(batches, landed, strict=True))

        total = sum(size for round_ in plan for _, size in round_)
        covered: list[int] = []
        for batch, result in results:
            covered.extend(range(result.first_position, result.last_position + 1))
            assert result.last_position - result.first_position + 1 == len(batch)
        assert sorted(covered) == list(range(1, total + 1))
        assert await store.last_position() == total

        stored = await read_everything(store, batch_size=7)
        assert_gap_free(stored)
        for batch, result in results:
            written = stored[result.first_position - 1 : result.last_position]
            assert [e.event_id for e in written] == [e.event_id for e in batch]
            assert {e.stream for e in written} == {result.stream}
            assert written[-1].version == result.stream_version

    run_with_store(backend, body)


# -- (c) concurrent appends with the same expected version: one wins ------------------------

# Per round: the contenders, each (batch size, how many times it yields before appending).
contenders = st.lists(st.tuples(st.integers(1, 3), st.integers(0, 3)), min_size=1, max_size=6)


@backends
@PROPERTY_SETTINGS
@given(races=st.lists(contenders, min_size=1, max_size=5), no_stream_first=st.booleans())
def test_one_winner_per_expected_version(
    backend: str, races: list[list[tuple[int, int]]], no_stream_first: bool
) -> None:
    async def contend(
        store: EventStore, events: list[NewEvent], expected: ExpectedVersion, yields: int
    ) -> AppendResult:
        for _ in range(yields):
            await asyncio.sleep(0)
        return await store.append("contested", events, expected)

    async def body(store: EventStore) -> None:
        version = 0
        winners: list[list[NewEvent]] = []
        for race in races:
            expected: ExpectedVersion = NO_STREAM if version == 0 and no_stream_first else version
            batches = [[NewEvent("Try", {"n": n}) for n in range(size)] for size, _ in race]
            outcomes: list[Any] = await asyncio.gather(
                *(
                    contend(store, batch, expected, yields)
                    for batch, (_, yields) in zip(batches, race, strict=True)
                ),
                return_exceptions=True,
            )
            won = [i for i, o in enumerate(outcomes) if isinstance(o, AppendResult)]
            assert len(won) == 1, outcomes
            winner = batches[won[0]]
            version += len(winner)
            winners.append(winner)
            assert outcomes[won[0]].stream_version == version
            for i, outcome in enumerate(outcomes):
                if i != won[0]:
                    assert isinstance(outcome, ConcurrencyError), outcome
                    assert outcome.actual == version

        stream = await store.read_stream("contested")
        assert [e.version for e in stream] == list(range(1, version + 1))
        assert [e.event_id for e in stream] == [e.event_id for w in winners for e in w]
        assert await store.stream_version("contested") == version
        assert await store.last_position() == version

    run_with_store(backend, body)
