"""Request bodies with a Content-Encoding: decoded whole, or refused (``postback.codings``),
unit by unit and through the app, for partners (logged refusals) and operators."""

from __future__ import annotations

import gzip
import io
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postback.codings import decode_body
from postback.errors import ApiError
from postback.keys import STORE
from tests.postback.helpers import (
    POSTBACK_PATHS,
    Api,
    Client,
    World,
    answer,
    bearer,
)

LIMIT = 1024


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # RFC 9110's deflate: the zlib format
    "Deflate": raw_deflate,  # what some clients send under that name; codings are caseless
}


def refusal(raw: bytes, coding: str, limit: int = LIMIT) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_body(raw, coding, limit)
    return caught.value


@given(data=st.binary(max_size=LIMIT), coding=st.sampled_from(sorted(ENCODERS)))
def test_every_whole_stream_decodes_to_what_was_encoded(data: bytes, coding: str) -> None:
    assert decode_body(ENCODERS[coding](data), coding, LIMIT) == data


@given(data=st.binary(max_size=LIMIT), coding=st.sampled_from(sorted(ENCODERS)), cut=st.data())
def test_a_stream_cut_short_is_refused_never_taken_for_less(
    data: bytes, coding: str, cut: st.DataObject
) -> None:
    stream = ENCODERS[coding](data)
    end = cut.draw(st.integers(min_value=0, max_value=len(stream) - 1))
    error = refusal(stream[:end], coding)
    assert (error.status, error.code) == (400, "bad_body")


@given(data=st.binary(max_size=64), tail=st.binary(min_size=1, max_size=16))
def test_bytes_after_the_stream_are_refused(data: bytes, tail: bytes) -> None:
    error = refusal(gzip.compress(data) + tail, "gzip")
    assert (error.status, error.code) == (400, "bad_body")


def test_identity_and_no_coding_leave_the_body_as_it_is() -> None:
    assert decode_body(b"clickid=A", "identity", LIMIT) == b"clickid=A"
    assert decode_body(b"clickid=A", " ", LIMIT) == b"clickid=A"
    assert decode_body(gzip.compress(b"a=1"), "identity, gzip", LIMIT) == b"a=1"


def test_not_compressed_at_all_is_a_400() -> None:
    for coding in ("gzip", "deflate"):
        error = refusal(b"clickid=A&goal=reg", coding)
        assert (error.status, error.code) == (400, "bad_body")


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "foo", "gzip, gzip", "gzip, br"])
def test_other_codings_and_more_than_one_are_a_415(coding: str) -> None:
    error = refusal(gzip.compress(gzip.compress(b"a=1")), coding)
    assert (error.status, error.code) == (415, "unsupported_encoding")
    assert "gzip or deflate" in error.message


def test_what_decodes_to_more_than_the_limit_is_a_413_however_small_it_came() -> None:
    bomb = gzip.compress(b"\0" * (LIMIT * 500))
    assert len(bomb) < LIMIT
    error = refusal(bomb, "gzip")
    assert (error.status, error.code) == (413, "too_large")
    assert decode_body(gzip.compress(b"\0" * LIMIT), "gzip", LIMIT) == b"\0" * LIMIT


# -- through the app ------------------------------------------------------------------


def form(**fields: str) -> bytes:
    return "&".join(f"{k}={v}" for k, v in fields.items()).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("path", POSTBACK_PATHS)
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_postback_is_recorded(
    client: Client, api: Api, world: World, path: str, coding: str
) -> None:
    raw = ENCODERS[coding](form(clickid=world.clickid, goal="dep", sum="12.50"))
    status, body = await answer(
        await client.post(path, data=raw, headers={**FORM, "Content-Encoding": coding})
    )
    assert status == 200, body
    state = await api.subscriber(world.key, world.subscriber_id)
    assert state["first_deposit"]["amount"] == "12.50", state


@pytest.mark.parametrize(
    ("raw", "coding", "status", "code"),
    [
        (b"clickid=X&goal=reg", "gzip", 400, "bad_body"),
        (gzip.compress(b"clickid=X&goal=dep&sum=100")[:20], "gzip", 400, "bad_body"),
        (b"x", "gzip", 400, "bad_body"),
        (b"xx", "deflate", 400, "bad_body"),
        (b"clickid=X&goal=reg", "br", 415, "unsupported_encoding"),
        (gzip.compress(b"\0" * (1024**2 + 1)), "gzip", 413, "too_large"),
    ],
)
async def test_a_body_that_cannot_be_decoded_is_refused_and_logged(
    client: Client, world: World, raw: bytes, coding: str, status: int, code: str
) -> None:
    # The cut stream above decodes, as far as it goes, to "clickid=X": aiohttp's own
    # decoding handed that on as the whole body. Nothing of a refused body is recorded.
    headers = {**FORM, "Content-Encoding": coding}
    got, body = await answer(
        await client.post(f"/postback/?clickid={world.clickid}", data=raw, headers=headers)
    )
    assert (got, body["code"]) == (status, code), body
    assert body["success"] is False
    events = await client.server.app[STORE].read_all()
    assert [e.type for e in events if e.type in ("GoalReached", "PostbackRejected")] == [
        "PostbackRejected"
    ]
    (logged,) = [e for e in events if e.type == "PostbackRejected"]
    assert logged.data["status"] == status
    assert logged.metadata["postback"]["clickid"] == world.clickid
    assert logged.metadata["postback"]["response"] == body


@pytest.mark.parametrize(
    ("raw", "coding", "status"),
    [
        (b"x", "gzip", 400),  # was read as no body at all: a goal defined with nothing
        (b'{"profile": {"level": 10}}', "gzip", 400),
        (b'{"profile": {"level": 10}}', "zstd", 415),
    ],
)
async def test_operator_bodies_that_cannot_be_decoded_are_refused(
    client: Client, api: Api, world: World, raw: bytes, coding: str, status: int
) -> None:
    headers = {**bearer(world.key), "Content-Type": "application/json", "Content-Encoding": coding}
    got, body = await answer(
        await client.put("/api/v1/goals/level10", data=io.BytesIO(raw), headers=headers)
    )
    assert got == status, body
    assert body["success"] is False
    assert isinstance(body["error"], str)


async def test_repeated_content_encoding_headers_are_one_list(
    client: Client, api: Api, world: World
) -> None:
    raw = gzip.compress(f"clickid={world.clickid}&goal=reg".encode())
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Content-Encoding", "identity"),
        ("Content-Encoding", "gzip"),
    ]
    status, body = await answer(await client.post("/postback/", data=raw, headers=headers))
    assert status == 200, body
    assert (await api.subscriber(world.key, world.subscriber_id))["goals"]["reg"]["count"] == 1


async def test_a_compressed_operator_body_is_read(client: Client, world: World) -> None:
    raw = gzip.compress(b'{"title": "Compressed"}')
    headers = {**bearer(world.key), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    status, body = await answer(await client.post("/api/v1/spots", data=raw, headers=headers))
    assert status == 201, body
    assert body["title"] == "Compressed"
