"""The event store contract: what every backend stores and promises.

The log is append-only. Every event has:

* a **global position**: 1, 2, 3, ... gap-free and in commit order across the whole log;
* a **stream** name and a **version** within that stream: 1, 2, 3, ... gap-free per stream;
* an **event id** (UUID) that makes appends idempotent;
* a **type**, a **schema version** of that type, **data** and **metadata** (JSON objects);
* the UTC time it was **recorded** (non-decreasing with the position);
* a **hash** chaining it to its predecessor (see :mod:`eventstore.chain`).

Backends (:mod:`eventstore.sqlite`, :mod:`eventstore.postgres`) implement :class:`EventStore`
and pass the same contract test suite; callers depend on this module only.
"""

from __future__ import annotations

import abc
import enum
import operator
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from eventstore.errors import EventStoreError, InvalidEventError

JSONObject = Mapping[str, Any]


class StreamState(enum.Enum):
    """Expected states of a stream that are not an exact version."""

    ANY = "any"
    """No check: append whatever the stream's version."""
    NO_STREAM = "no_stream"
    """The stream must not exist yet (it has no events)."""
    EXISTS = "exists"
    """The stream must have at least one event."""


ExpectedVersion = int | StreamState
"""An exact stream version (0 means "no events yet") or a :class:`StreamState`."""

ANY: Final = StreamState.ANY
NO_STREAM: Final = StreamState.NO_STREAM
EXISTS: Final = StreamState.EXISTS


_ID_BITS = random.Random()  # seeded from os.urandom
os.register_at_fork(after_in_child=_ID_BITS.seed)  # a forked child must not repeat its parent


def id_bits(count: int) -> int:
    """``count`` random bits for ids, from a generator of this module's own: seeded from
    ``os.urandom`` (again in a forked child), and out of reach of ``random.seed`` (which
    test tools such as hypothesis call for each example, and which would make ids repeat).
    Ids must be unique, not unpredictable; ``os.urandom`` costs a system call each."""
    return _ID_BITS.getrandbits(count)


def new_event_id() -> uuid.UUID:
    """A fresh UUIDv7 (RFC 9562): time-ordered, so the event-id index grows at its end.

    Random (v4) ids work too; they only make the unique index slower to insert into.
    The 74 random bits come from :func:`id_bits`.
    """
    unix_ms = time.time_ns() // 1_000_000
    rand = id_bits(74)
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return uuid.UUID(int=value)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``data`` and ``metadata`` must be JSON-serializable objects.

    ``metadata`` describes the circumstances of the write (which request caused it,
    from where); it is stored and hashed but is not part of the idempotency comparison.
    """

    type: str
    data: JSONObject
    metadata: JSONObject = field(default_factory=dict)
    event_id: uuid.UUID = field(default_factory=new_event_id)
    schema_version: int = 1


class RecordedEvent:
    """An event as stored in the log (after upcasting, when an upcaster applies).

    Read-only by convention: readers may share one instance, so never assign to its
    attributes. Compared by value, as a dataclass would be.

    An event read from a backend (:meth:`stored`) keeps its id, metadata and time as
    stored (16 bytes, JSON, microseconds) and builds the ``UUID``, the ``dict`` and the
    ``datetime`` on first use: most readers (a projection's fold) never touch most of
    them, and building all three cost 60% of decoding a row. :attr:`recorded_us` gives the
    time as stored, without a ``datetime``.
    """

    __match_args__ = (
        "position",
        "stream",
        "version",
        "event_id",
        "type",
        "schema_version",
        "data",
        "metadata",
        "recorded_at",
        "hash",
    )
    __slots__ = (
        "_event_id",
        "_metadata",
        "_recorded_at",
        "_recorded_us",
        "data",
        "hash",
        "position",
        "schema_version",
        "stream",
        "type",
        "version",
    )

    position: int
    stream: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    hash: bytes
    _event_id: uuid.UUID | bytes
    _metadata: dict[str, Any] | bytes | str
    _recorded_at: datetime | None
    _recorded_us: int | None

    def __init__(
        self,
        position: int,
        stream: str,
        version: int,
        event_id: uuid.UUID,
        type: str,
        schema_version: int,
        data: dict[str, Any],
        metadata: dict[str, Any],
        recorded_at: datetime,
        hash: bytes,
    ) -> None:
        self.position = position
        self.stream = stream
        self.version = version
        self._event_id = event_id
        self.type = type
        self.schema_version = schema_version
        self.data = data
        self._metadata = metadata
        self._recorded_at = recorded_at
        self._recorded_us = None
        self.hash = hash

    @classmethod
    def stored(
        cls,
        position: int,
        stream: str,
        version: int,
        event_id: bytes,
        type: str,
        schema_version: int,
        data: dict[str, Any],
        metadata: bytes | str,
        recorded_us: int,
        hash: bytes,
    ) -> RecordedEvent:
        """An event as a backend reads it: the id's 16 bytes, the metadata's JSON text and
        the time in microseconds since the epoch, each decoded on first use."""
        event = cls.__new__(cls)
        event.position = position
        event.stream = stream
        event.version = version
        event._event_id = event_id
        event.type = type
        event.schema_version = schema_version
        event.data = data
        event._metadata = metadata
        event._recorded_at = None
        event._recorded_us = recorded_us
        event.hash = hash
        return event

    @property
    def event_id(self) -> uuid.UUID:
        value = self._event_id
        if isinstance(value, bytes):
            value = self._event_id = uuid.UUID(bytes=value)
        return value

    @property
    def metadata(self) -> dict[str, Any]:
        value = self._metadata
        if isinstance(value, bytes | str):  # as stored: decoded once, on first use
            value = self._metadata = orjson.loads(value)
        return value

    @property
    def stored_metadata(self) -> bytes | str | None:
        """The metadata's JSON text as the backend read it, while :attr:`metadata` has not
        decoded it; None once it has, and for an event built in memory. For a reader that
        needs a few fields of large metadata and can parse them more cheaply itself (it
        falls back to :attr:`metadata` on None)."""
        value = self._metadata
        return value if type(value) is bytes or type(value) is str else None

    @property
    def recorded_at(self) -> datetime:
        value = self._recorded_at
        if value is None:
            assert self._recorded_us is not None
            value = self._recorded_at = utc_from_micros(self._recorded_us)
        return value

    @property
    def recorded_us(self) -> int:
        """:attr:`recorded_at` in microseconds since the Unix epoch (exact)."""
        value = self._recorded_us
        if value is None:
            at = self._recorded_at
            assert at is not None
            # A hand-built event may carry a naive time: UTC, as the projections took it.
            value = micros_from_utc(at if at.tzinfo is not None else at.replace(tzinfo=UTC))
            self._recorded_us = value
        return value

    def _values(self) -> tuple[Any, ...]:
        return _event_values(self)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, RecordedEvent)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable

    def __repr__(self) -> str:
        pairs = zip(self.__match_args__, self._values(), strict=True)
        return f"RecordedEvent({', '.join(f'{name}={value!r}' for name, value in pairs)})"


_event_values: Final = operator.attrgetter(*RecordedEvent.__match_args__)


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event exactly as a backend stores it: every column the hash chain covers.

    For copying a log between backends (``iter_raw`` on one, ``import_raw`` on another):
    ``data`` and ``metadata`` are the stored canonical JSON bytes, never re-encoded, and
    ``event_id`` the 16 bytes of the UUID, so the hash recomputed from a copy is the
    original's and ``verify`` passes on the copy.
    """

    position: int
    stream: str
    version: int
    event_id: bytes
    type: str
    schema_version: int
    data: bytes
    metadata: bytes
    recorded_us: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed.

    ``duplicate`` is true when every event was already stored (an idempotent retry):
    the positions are then those of the original append and nothing was written.
    """

    stream: str
    first_position: int
    last_position: int
    stream_version: int
    duplicate: bool = False


class TamperKind(enum.Enum):
    HASH_MISMATCH = "hash_mismatch"
    """The stored hash does not match the event's content and its predecessor."""
    MISSING = "missing"
    """A position is absent: an event was deleted (or positions were renumbered)."""
    TRUNCATED = "truncated"
    """The log ends before the recorded chain head: events were deleted from the end."""
    HEAD_MISMATCH = "head_mismatch"
    """The recorded chain head does not match the last event."""
    ANCHOR_MISMATCH = "anchor_mismatch"
    """The hash at an externally kept anchor position differs from the anchor."""


@dataclass(frozen=True, slots=True)
class TamperFinding:
    position: int
    kind: TamperKind
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of :meth:`EventStore.verify`.

    ``head_position`` and ``head_hash`` are what an auditor keeps outside the database
    (printed, mailed, published): passing them back as an anchor later proves that no one
    rewrote history before that point, even someone who recomputed every hash.
    """

    checked: int
    head_position: int
    head_hash: bytes
    finding: TamperFinding | None

    @property
    def ok(self) -> bool:
        return self.finding is None


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    """Upcasters turn the data of an old schema version of an event type into the next one.

    Register ``(type, from_version) -> fn``; reading an event of ``from_version`` applies
    ``fn`` and continues from ``from_version + 1`` until no upcaster applies. Stored
    events are never rewritten, so their hashes stay valid.
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int, fn: Upcaster) -> None:
        key = (event_type, from_version)
        if key in self._by_key:
            raise ValueError(f"an upcaster for {event_type} v{from_version} is registered")
        self._by_key[key] = fn

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def upcast(
        self, event_type: str, version: int, data: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        while (fn := self._by_key.get((event_type, version))) is not None:
            data = fn(data)
            version += 1
        return version, data


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def utc_from_micros(micros: int) -> datetime:
    """Exact (no float rounding) UTC datetime of microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=micros)


def micros_from_utc(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact)."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no defined UTC instant")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


MAX_POSITION: Final = 2**63 - 1
"""The largest position a backend can store (a signed 64-bit integer)."""


def positions_to_read(positions: Collection[int]) -> list[int]:
    """The distinct positions of ``positions`` that can be in a log, ascending.

    For backends implementing :meth:`EventStore.read_at`: a value that is not an ``int``
    (``bool`` included) raises :class:`~eventstore.errors.InvalidEventError`, so a
    caller's bug never reaches the driver; values outside ``1..MAX_POSITION`` are dropped.
    """
    wanted: set[int] = set()
    for position in positions:
        if not isinstance(position, int) or isinstance(position, bool):
            raise InvalidEventError(f"a position must be an int, not {position!r}")
        if 0 < position <= MAX_POSITION:
            wanted.add(int(position))
    return sorted(wanted)


class EventStore(abc.ABC):
    """An append-only, tamper-evident event log. Every backend implements this.

    All methods are coroutines that never block the event loop. Errors are instances of
    :class:`eventstore.errors.EventStoreError`.
    """

    @abc.abstractmethod
    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` atomically, then return where they landed.

        Returns only once the events are durable. Rules, in the order they are checked:

        1. If every event id is already stored with the same stream, type, schema version
           and data, nothing is written and the original result is returned
           (``duplicate=True``), whatever ``expected_version`` says: a retry succeeds.
           If some ids are stored and others not, or a stored id has other content,
           :class:`~eventstore.errors.DuplicateEventError` is raised.
        2. If the stream's current version does not satisfy ``expected_version``,
           :class:`~eventstore.errors.ConcurrencyError` is raised and nothing is written.
        3. Otherwise the events get consecutive stream versions and global positions.

        The events of one append always occupy consecutive positions
        (``first_position .. last_position``), in the order given: no other append's
        events come between them, however many appends run concurrently or are
        committed together.

        Concurrent appends may be committed together in one transaction (group commit);
        one caller's error never fails another's append. A caller cancelled while waiting
        does not take its append back: it may still commit (retry with the same event ids
        to learn the outcome; the retry is idempotent).
        """

    @abc.abstractmethod
    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of ``stream`` from ``from_version`` on, in version order ([] if none)."""

    @abc.abstractmethod
    async def stream_version(self, stream: str) -> int:
        """The version of the stream's last event, 0 when it has none."""

    @abc.abstractmethod
    async def read_all(
        self, after: int = 0, limit: int = 1000, *, leave_out: Collection[str] = ()
    ) -> list[RecordedEvent]:
        """At most ``limit`` events with a position greater than ``after``, in order.

        ``leave_out``: fields among ``stream``, ``metadata`` and ``hash`` that the caller
        never reads, which the backend then does not read either; an event read without
        them has ``""`` as its stream, ``{}`` as its metadata and ``b""`` as its hash
        (:mod:`eventstore.reading`). ValueError for any other field."""

    async def iter_all(
        self, after: int = 0, batch_size: int = 1000, until: int | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Batches of the whole log after ``after`` (up to position ``until``), streamed."""
        while True:
            batch = await self.read_all(after, batch_size)
            if until is not None:
                batch = [e for e in batch if e.position <= until]
            if not batch:
                return
            yield batch
            after = batch[-1].position
            if len(batch) < batch_size or (until is not None and after >= until):
                return

    @abc.abstractmethod
    async def get_event(self, event_id: uuid.UUID) -> RecordedEvent | None:
        """The event with that id, or None."""

    @abc.abstractmethod
    async def read_at(self, positions: Collection[int]) -> list[RecordedEvent]:
        """The events at ``positions``, each once, in position order.

        ``positions`` is any collection of ints, in any order, duplicates allowed (up to
        thousands per call: a backend reads them in one query, or a few, never one per
        position). Positions that are not in the log (0, negative, beyond the head) are
        left out. A value that is not an ``int`` (``bool`` included) raises
        :class:`~eventstore.errors.InvalidEventError`. An empty collection returns []
        without touching the database.
        """

    @abc.abstractmethod
    async def last_position(self) -> int:
        """The position of the last committed event, 0 for an empty log."""

    @abc.abstractmethod
    async def wait_for_events(self, after: int, timeout: float | None = None) -> int:
        """Wait until the log has an event after ``after``; return the last position.

        Returns at once if there already is one. Appends through this store object wake
        waiters as soon as they commit (no polling). On timeout, returns the last position
        as it is then (which may still be ``after``).
        """

    @abc.abstractmethod
    async def verify(self, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
        """Recompute the hash chain over the whole log and report the first tampered position.

        Streams the log; never holds it in memory. ``anchor`` is a ``(position, hash)``
        pair kept outside the database from an earlier verify.
        """

    @property
    @abc.abstractmethod
    def writable(self) -> bool:
        """Whether appends can be taken now: open, and the writer running (for health checks)."""

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Check that the database takes a write now, writing nothing (a no-op update of
        the chain head, rolled back): clears :attr:`write_failure` if it does; records and
        raises the store's error if not. For health checks after a failure, when no
        append may come to tell (a load balancer sends no more traffic)."""

    @property
    @abc.abstractmethod
    def write_failure(self) -> EventStoreError | None:
        """Why the last group commit failed as a whole (the database would not take it: a
        read-only file, a full disk, the server away), or None: none has failed since the
        last one that committed (for health checks: the writer runs but cannot write)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending appends, then release connections. Idempotent."""

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
