"""An append-only, tamper-evident event log with optimistic concurrency and group commit.

Knows nothing of postbacks: streams, positions, events and bytes. See :mod:`eventstore.base`
for the contract every backend implements.
"""

from eventstore.base import (
    ANY,
    EXISTS,
    NO_STREAM,
    AppendResult,
    EventStore,
    ExpectedVersion,
    NewEvent,
    RawEvent,
    RecordedEvent,
    StreamState,
    TamperFinding,
    TamperKind,
    Upcasters,
    VerifyReport,
    new_event_id,
)
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    InvalidEventError,
    SchemaVersionError,
    StoreClosedError,
    StoreUnavailableError,
    TamperedLogError,
)

__all__ = [
    "ANY",
    "EXISTS",
    "NO_STREAM",
    "AppendResult",
    "ConcurrencyError",
    "DuplicateEventError",
    "EventStore",
    "EventStoreError",
    "ExpectedVersion",
    "InvalidEventError",
    "NewEvent",
    "RawEvent",
    "RecordedEvent",
    "SchemaVersionError",
    "StoreClosedError",
    "StoreUnavailableError",
    "StreamState",
    "TamperFinding",
    "TamperKind",
    "TamperedLogError",
    "Upcasters",
    "VerifyReport",
    "new_event_id",
]
