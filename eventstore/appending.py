"""The rules of an append, independent of the backend: validation, idempotency, versions.

What :meth:`eventstore.base.EventStore.append` promises, as plain functions over plain
records, so every backend checks an append the same way:

* :func:`encode_events` validates the events and serializes them (canonical JSON bytes)
  before anything is queued, raising :class:`~eventstore.errors.InvalidEventError`;
* :func:`replayed` decides whether an append was already done (an idempotent retry, with
  its original result) or collides with stored events (``DuplicateEventError``);
* :func:`satisfies` checks an expected version against the stream's actual one.

Both backends use this module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from eventstore.base import (
    AppendResult,
    ExpectedVersion,
    NewEvent,
    StreamState,
)
from eventstore.chain import encode_json
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    InvalidEventError,
)

Outcome = AppendResult | EventStoreError
"""What one append of a group commit came to: its result, or its own error."""


# Plain (not frozen) slotted records: they are built per event on the hot path, where a
# frozen dataclass's __init__ costs four times as much.


@dataclass(slots=True)
class EncodedEvent:
    """An event ready to store: everything already serialized and validated."""

    event_id: bytes
    type: str
    type_utf8: bytes
    schema_version: int
    data: bytes
    metadata: bytes


@dataclass(slots=True)
class AppendRequest:
    """One caller's append, validated, waiting for the writer."""

    stream: str
    stream_utf8: bytes
    events: Sequence[EncodedEvent]
    expected: ExpectedVersion


@dataclass(slots=True)
class Stored:
    """What idempotency compares, for an event already in the log (or earlier in the batch)."""

    position: int
    stream: str
    version: int
    type: str
    schema_version: int
    data: bytes


def utf8(text: str, what: str) -> bytes:
    """``text`` as UTF-8; :class:`InvalidEventError` if it is not valid Unicode text."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEventError(f"the {what} is not valid Unicode text: {exc}") from exc


def check_expected_version(expected_version: object) -> ExpectedVersion:
    """``expected_version`` if it is a version (int >= 0) or a StreamState, else an error."""
    if (type(expected_version) is int and expected_version >= 0) or isinstance(
        expected_version, StreamState
    ):
        return expected_version
    raise InvalidEventError(f"invalid expected version {expected_version!r}")


def encode_events(events: Sequence[NewEvent]) -> list[EncodedEvent]:
    """Validate and serialize the events of one append (InvalidEventError if malformed)."""
    if not events:
        raise InvalidEventError("an append needs at least one event")
    encoded: list[EncodedEvent] = []
    seen: set[bytes] = set()
    for event in events:
        if not isinstance(event, NewEvent):
            raise InvalidEventError(f"not a NewEvent: {event!r}")
        if not isinstance(event.type, str) or not event.type:
            raise InvalidEventError("an event needs a non-empty type")
        if not isinstance(event.data, dict) or not isinstance(event.metadata, dict):
            raise InvalidEventError("event data and metadata must be JSON objects (dicts)")
        if type(event.schema_version) is not int or event.schema_version < 1:
            raise InvalidEventError("schema_version is an integer starting at 1")
        event_id = event.event_id.bytes
        if len(events) > 1:
            if event_id in seen:
                raise InvalidEventError(f"event id {event.event_id} appears twice in one append")
            seen.add(event_id)
        encoded.append(
            EncodedEvent(
                event_id,
                event.type,
                utf8(event.type, "event type"),
                event.schema_version,
                encode_json(event.data),
                encode_json(event.metadata),
            )
        )
    return encoded


def satisfies(expected: ExpectedVersion, actual: int) -> bool:
    """Whether a stream at version ``actual`` meets ``expected``."""
    if expected is StreamState.ANY:
        return True
    if expected is StreamState.NO_STREAM:
        return actual == 0
    if expected is StreamState.EXISTS:
        return actual > 0
    return expected == actual


def describe(expected: ExpectedVersion) -> object:
    """``expected`` as a ConcurrencyError reports it."""
    return expected.value if isinstance(expected, StreamState) else expected


def verdict(request: AppendRequest, stored: dict[bytes, Stored], actual: int) -> Outcome | None:
    """What an append comes to before anything is written, checked in the contract's order:
    its original result (a retry) or a DuplicateEventError, then a ConcurrencyError if the
    stream, at version ``actual``, does not meet its expected version; None: write it."""
    if stored:
        replay = replayed(request, stored)
        if replay is not None:
            return replay
    if not satisfies(request.expected, actual):
        return ConcurrencyError(request.stream, describe(request.expected), actual)
    return None


def replayed(request: AppendRequest, stored: dict[bytes, Stored]) -> Outcome | None:
    """The original result if this append was already done; an error if only in part.

    None when none of its event ids is in ``stored`` (a new append). Metadata is not
    compared: it describes the circumstances of a write and may differ on a retry.
    """
    hits = [stored.get(e.event_id) for e in request.events]
    if hits.count(None) == len(hits):
        return None
    for event, hit in zip(request.events, hits, strict=True):
        event_id = uuid.UUID(bytes=event.event_id)
        if hit is None:
            return DuplicateEventError(
                event_id, "other events of this append are stored, this one is not"
            )
        if (hit.stream, hit.type, hit.schema_version, hit.data) != (
            request.stream,
            event.type,
            event.schema_version,
            event.data,
        ):
            return DuplicateEventError(
                event_id, f"already stored at position {hit.position} with other content"
            )
    positions = [hit.position for hit in hits if hit is not None]
    versions = [hit.version for hit in hits if hit is not None]
    return AppendResult(
        stream=request.stream,
        first_position=min(positions),
        last_position=max(positions),
        stream_version=max(versions),
        duplicate=True,
    )


def batch_size(pending: Sequence[AppendRequest], max_events: int) -> int:
    """How many of the queued appends the next group commit takes: all of them, up to
    ``max_events`` events (at least one append, however large)."""
    taken = 0
    count = 0
    for request in pending:
        if taken and taken + len(request.events) > max_events:
            break
        taken += len(request.events)
        count += 1
    return count


def settle(waiters: Sequence[asyncio.Future[AppendResult]], outcomes: Sequence[Outcome]) -> int:
    """Give each caller of a committed batch its outcome; return the highest position the
    batch wrote (0 if it wrote none: all duplicates or errors)."""
    last = 0
    for waiter, outcome in zip(waiters, outcomes, strict=True):
        if isinstance(outcome, AppendResult):
            if not outcome.duplicate and outcome.last_position > last:
                last = outcome.last_position
            if not waiter.done():
                waiter.set_result(outcome)
        elif not waiter.done():
            waiter.set_exception(outcome)
    return last
