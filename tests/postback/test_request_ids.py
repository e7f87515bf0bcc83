"""The postback log's request ids: UUID4 text, unique whatever ``random.seed`` does."""

from __future__ import annotations

import random
import uuid

from postback.http import new_request_id


def test_request_ids_are_uuid4_text() -> None:
    for _ in range(1000):
        text = new_request_id()
        request_id = uuid.UUID(text)
        assert (request_id.version, request_id.variant) == (4, uuid.RFC_4122)
        assert str(request_id) == text


def test_request_ids_ignore_the_global_random_seed() -> None:
    """hypothesis seeds the global generator for each example (tests/postback/test_fuzz.py
    sends postbacks in many): the postback log must still tell their requests apart."""
    seen = set()
    for _ in range(50):
        random.seed(1)
        seen.add(new_request_id())
    assert len(seen) == 50
