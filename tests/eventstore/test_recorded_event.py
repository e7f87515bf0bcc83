"""RecordedEvent: an event built from its stored forms (decoded on first use) is the same
value as one built from decoded ones."""

from __future__ import annotations

import copy
import pickle
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from eventstore.base import RecordedEvent, micros_from_utc
from eventstore.reading import decode_row

EVENT_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
AT = datetime(2026, 11, 24, 12, 30, 15, 123456, tzinfo=UTC)
META = {"postback": {"request_id": "r-1", "status": 200}}


def built() -> RecordedEvent:
    return RecordedEvent(7, "s", 2, EVENT_ID, "Paid", 1, {"amount": "1.5"}, META, AT, b"h" * 32)


def stored() -> RecordedEvent:
    return RecordedEvent.stored(
        7,
        "s",
        2,
        EVENT_ID.bytes,
        "Paid",
        1,
        {"amount": "1.5"},
        orjson.dumps(META),
        micros_from_utc(AT),
        b"h" * 32,
    )


def test_a_stored_event_equals_the_built_one_field_by_field() -> None:
    event = stored()
    assert event == built()
    assert built() == event
    assert event.event_id == EVENT_ID
    assert event.metadata == META
    assert event.metadata is event.metadata  # decoded once
    assert event.recorded_at == AT
    assert event.recorded_us == built().recorded_us == micros_from_utc(AT)
    assert repr(event) == repr(built())
    assert repr(event).startswith("RecordedEvent(position=7, stream='s', version=2, event_id=")


def test_unequal_values_and_other_types() -> None:
    other = stored()
    other.data = {"amount": "2"}
    assert other != built()
    assert built() != (7, "s")
    with pytest.raises(TypeError, match="unhashable"):
        hash(built())


def test_copies_and_pickles_keep_the_value() -> None:
    for event in (stored(), built()):
        assert pickle.loads(pickle.dumps(event)) == built()
        assert copy.copy(event) == built()
        assert copy.deepcopy(event) == built()


def test_match_by_position() -> None:
    match stored():
        case RecordedEvent(position, stream, version, event_id, "Paid"):
            assert (position, stream, version, event_id) == (7, "s", 2, EVENT_ID)
        case _:
            pytest.fail("no match")


def test_a_naive_time_is_taken_as_utc() -> None:
    naive = RecordedEvent(1, "s", 1, EVENT_ID, "T", 1, {}, {}, AT.replace(tzinfo=None), b"")
    assert naive.recorded_us == micros_from_utc(AT)


def test_decode_row_reads_lazily_what_both_backends_select() -> None:
    row = (7, "s", 2, EVENT_ID.bytes, "Paid", 1, b'{"amount":"1.5"}', orjson.dumps(META))
    event = decode_row((*row, micros_from_utc(AT), b"h" * 32), None)
    assert event == built()
    text = decode_row((*row[:7], orjson.dumps(META).decode(), micros_from_utc(AT), b"h" * 32), None)
    assert text.metadata == META


def test_the_stored_metadata_is_there_until_it_is_decoded() -> None:
    event = stored()
    assert event.stored_metadata == orjson.dumps(META)
    assert event.metadata == META
    assert event.stored_metadata is None  # decoded: the dict is the one to read
    assert built().stored_metadata is None
