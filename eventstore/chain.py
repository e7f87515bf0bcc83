"""The hash chain that makes the log tamper-evident, and the canonical bytes it covers.

``hash(n) = SHA-256(hash(n-1) || header || event_id || stream || type || data || metadata)``
where ``header`` packs the position, stream version, schema version, recorded time (µs)
and the lengths of the variable fields, so no two different events share an encoding.
The chain starts from :data:`GENESIS` (32 zero bytes). Editing any field of any event,
deleting one, or reordering them changes every hash from that position on.

The encoding is independent of the backend (stream names, not internal ids), so a log
copied from SQLite to PostgreSQL keeps its hashes and can be verified there.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any, Final

import orjson

from eventstore.base import TamperFinding, TamperKind, VerifyReport
from eventstore.errors import InvalidEventError

GENESIS: Final = bytes(32)
HASH_ALGORITHM: Final = "sha256"

_HEADER = struct.Struct(">qqqqIIII")


def event_hash(
    previous: bytes,
    position: int,
    stream: bytes,
    version: int,
    event_id: bytes,
    event_type: bytes,
    schema_version: int,
    data: bytes,
    metadata: bytes,
    recorded_us: int,
) -> bytes:
    """The chained hash of one event; every argument is as stored."""
    header = _HEADER.pack(
        position,
        version,
        schema_version,
        recorded_us,
        len(stream),
        len(event_type),
        len(data),
        len(metadata),
    )
    return hashlib.sha256(
        b"".join((previous, header, event_id, stream, event_type, data, metadata))
    ).digest()


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if value is None:
        return b""
    return str(value).encode()


def encode_json(value: Any) -> bytes:
    """Canonical JSON bytes (sorted keys), so equal objects give equal bytes and hashes."""
    if not value and isinstance(value, dict):
        return b"{}"
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise InvalidEventError(f"event data is not JSON-serializable: {exc}") from exc


class ChainVerifier:
    """Walks the log in position order and finds the first place where it was tampered with.

    Backend-independent: a backend feeds it the stored rows, then calls :meth:`finish`
    with the chain head it recorded. Each event's hash is recomputed from its content and
    the *stored* hash of its predecessor, so an edit is reported at the edited position.
    """

    def __init__(self, anchor: tuple[int, bytes] | None = None) -> None:
        self._anchor = anchor
        self._previous = GENESIS
        self._next_position = 1
        self.checked = 0
        self.finding: TamperFinding | None = None

    def feed(
        self,
        position: int,
        stream: bytes,
        version: int,
        event_id: bytes,
        event_type: bytes,
        schema_version: int,
        data: bytes,
        metadata: bytes,
        recorded_us: int,
        stored_hash: bytes,
    ) -> bool:
        """Check one event; returns False once a finding is made (stop feeding then)."""
        if self.finding is not None:
            return False
        if position != self._next_position:
            missing_to = position - 1
            self.finding = TamperFinding(
                self._next_position,
                TamperKind.MISSING,
                f"positions {self._next_position}..{missing_to} are missing"
                if missing_to > self._next_position
                else f"position {self._next_position} is missing",
            )
            return False
        computed = event_hash(
            self._previous,
            position,
            stream,
            version,
            event_id,
            event_type,
            schema_version,
            data,
            metadata,
            recorded_us,
        )
        if computed != stored_hash:
            self.finding = TamperFinding(
                position,
                TamperKind.HASH_MISMATCH,
                "the event's content does not match its hash "
                "(edited, reordered, or its predecessor was replaced)",
            )
            return False
        if (
            self._anchor is not None
            and self._anchor[0] == position
            and self._anchor[1] != stored_hash
        ):
            self.finding = TamperFinding(
                position,
                TamperKind.ANCHOR_MISMATCH,
                "the hash at the anchor position differs from the anchor kept outside the "
                "database: history up to it was rewritten",
            )
            return False
        self._previous = stored_hash
        self._next_position += 1
        self.checked += 1
        return True

    def feed_row(self, row: Sequence[Any]) -> bool:
        """Like :meth:`feed`, for a row as a database returns it, whatever was done to it.

        Someone editing the file by hand may leave a NULL, text where bytes were, or a
        number where text was; such a row is reported as a mismatch, never a crash.
        """
        position = row[0]
        try:
            return self.feed(
                int(position),
                _as_bytes(row[1]),
                int(row[2]),
                _as_bytes(row[3]),
                _as_bytes(row[4]),
                int(row[5]),
                _as_bytes(row[6]),
                _as_bytes(row[7]),
                int(row[8]),
                _as_bytes(row[9]),
            )
        except (TypeError, ValueError, OverflowError, struct.error):
            self.finding = TamperFinding(
                int(position) if isinstance(position, int) else self._next_position,
                TamperKind.HASH_MISMATCH,
                "the stored row is malformed (a column holds a value of the wrong kind)",
            )
            return False

    def finish(self, head: tuple[int, bytes] | None) -> VerifyReport:
        """Compare the end of the walk with the recorded chain head and the anchor."""
        last = self._next_position - 1
        if self.finding is None and head is not None:
            head_position, head_hash = head
            if head_position > last:
                self.finding = TamperFinding(
                    last + 1,
                    TamperKind.TRUNCATED,
                    f"the chain head says the log ends at {head_position}, but it ends at {last}",
                )
            elif head_position < last:
                self.finding = TamperFinding(
                    head_position + 1,
                    TamperKind.HEAD_MISMATCH,
                    f"events after the recorded chain head ({head_position}) were added "
                    "outside the store",
                )
            elif head_hash != self._previous:
                self.finding = TamperFinding(
                    last, TamperKind.HEAD_MISMATCH, "the recorded chain head hash differs"
                )
        if self.finding is None and self._anchor is not None and self._anchor[0] > last:
            self.finding = TamperFinding(
                last + 1,
                TamperKind.ANCHOR_MISMATCH,
                f"the anchor position {self._anchor[0]} is beyond the end of the log ({last})",
            )
        return VerifyReport(
            checked=self.checked,
            head_position=last,
            head_hash=self._previous,
            finding=self.finding,
        )
