"""Event ids: unique whatever ``random.seed`` does, and in forked children."""

from __future__ import annotations

import os
import random
import uuid

from eventstore.base import id_bits, new_event_id


def test_ids_ignore_the_global_random_seed() -> None:
    """Test tools (hypothesis) seed the global generator for each example; ids must not
    repeat when they do."""
    seen: set[uuid.UUID] = set()
    bits: set[int] = set()
    for _ in range(50):
        random.seed(1)
        seen.add(new_event_id())
        bits.add(id_bits(64))
    assert len(seen) == len(bits) == 50


def test_event_ids_are_uuid7_in_time_order() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert {(event_id.version, event_id.variant) for event_id in ids} == {(7, uuid.RFC_4122)}
    millis = [event_id.int >> 80 for event_id in ids]
    assert millis == sorted(millis)


def test_a_forked_child_does_not_repeat_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its bits, to the parent
        try:
            os.write(write, id_bits(128).to_bytes(16, "big"))
        finally:
            os._exit(0)
    os.close(write)
    ours = id_bits(128)
    with os.fdopen(read, "rb") as pipe:
        theirs = int.from_bytes(pipe.read(16), "big")
    os.waitpid(pid, 0)
    assert theirs != ours
