"""The event store's own exceptions.

Backends translate their driver's errors into these at one boundary, so callers never
catch ``sqlite3.Error`` or ``asyncpg.PostgresError``.
"""

from __future__ import annotations

import uuid


class EventStoreError(Exception):
    """Base of every error the event store raises."""


class ConcurrencyError(EventStoreError):
    """The stream's version was not the expected one; nothing was written."""

    def __init__(self, stream: str, expected: object, actual: int) -> None:
        super().__init__(f"stream {stream!r}: expected version {expected}, actual version {actual}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class DuplicateEventError(EventStoreError):
    """An event id is already stored with other content (or only part of an append is).

    A retried append of exactly the same events is not an error: it returns the
    original positions. This error means the id was reused for something else.
    """

    def __init__(self, event_id: uuid.UUID, reason: str) -> None:
        super().__init__(f"event {event_id}: {reason}")
        self.event_id = event_id
        self.reason = reason


class InvalidEventError(EventStoreError, ValueError):
    """An event or an append request is malformed (empty type, unserializable data...)."""


class StoreUnavailableError(EventStoreError):
    """The database could not be reached or written (locked too long, disk full, I/O error)."""


class SchemaVersionError(EventStoreError):
    """The database was written by a newer version of this software."""


class StoreClosedError(EventStoreError):
    """The store was used after ``close()``."""


class TamperedLogError(EventStoreError):
    """Events offered to ``import_raw`` do not continue this log; nothing was imported.

    ``position`` is the first offending event: its hash does not chain from its
    predecessor (the copy was edited, or comes from another log), or its position, stream
    version or recorded time does not follow on, or its id is already stored.
    """

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"position {position}: {reason}")
        self.position = position
        self.reason = reason
