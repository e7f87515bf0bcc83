"""Requests aiohttp refuses before the app sees them still get a JSON error (postback/server.py).

The app is served by the runner ``postback serve`` uses, on a loopback port, and spoken to
with raw bytes: no HTTP client would send these requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from postback.app import create_app
from postback.config import Config
from postback.server import error_body, make_runner


@web.middleware
async def breaks_on_boom(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outside the app's own error middleware: what only aiohttp's handler catches."""
    if request.path == "/boom":
        raise RuntimeError("a bug outside every middleware")
    return await handler(request)


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    app = create_app(Config(db_path=str(tmp_path / "t.db"), run_projections=False))
    app.middlewares.insert(0, breaks_on_boom)
    runner = make_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read until the server closes: status, headers (lowercased), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


MALFORMED = {
    "request line over 8190 bytes": b"GET /postback/?clickid="
    + b"a" * 9000
    + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8190 bytes": b"GET /postback/?clickid=a HTTP/1.1\r\nHost: x\r\nX-A: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "control character in the query": b"GET /postback/?clickid=a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad Content-Length": b"POST /postback/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "TLS to the plain port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    "no HTTP at all": b"hello\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_request_aiohttp_cannot_parse_gets_a_json_400(port: int, raw: bytes) -> None:
    status, headers, body = await exchange(port, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    answer = orjson.loads(body)
    assert answer["success"] is False
    assert answer["code"] == "bad_request"
    assert answer["error"].startswith("malformed HTTP request")
    assert "aaaa" not in answer["error"]  # aiohttp quotes the input; not kept


async def test_they_are_counted_in_the_metrics(port: int) -> None:
    for raw in (MALFORMED["bad Content-Length"], MALFORMED["no HTTP at all"]):
        await exchange(port, raw)
    _, _, body = await exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    line = 'postback_http_requests_total{method="-",route="(unparsed)",status="400"} 2.0'
    assert line in body.decode()


async def test_an_error_outside_every_middleware_is_a_json_500_counted_apart(port: int) -> None:
    status, headers, body = await exchange(
        port, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 500
    assert headers["content-type"].startswith("application/json")
    assert orjson.loads(body) == {"success": False, "code": "internal", "error": "internal error"}
    _, _, metrics = await exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert 'route="(unhandled)",status="500"} 1.0' in metrics.decode()
    assert "(unparsed)" not in metrics.decode()


async def test_the_server_still_answers_well_formed_requests_after_one(port: int) -> None:
    await exchange(port, MALFORMED["bad Content-Length"])
    status, headers, body = await exchange(
        port, b"GET /postback/?goal=reg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert (status, orjson.loads(body)["code"]) == (400, "no_identity")
    assert headers["content-type"].startswith("application/json")


def test_error_body_keeps_the_first_line_of_aiohttps_description() -> None:
    assert error_body(400, "Invalid char in url query:\n\n  b'GET /x\\x01'\n   ^") == {
        "success": False,
        "code": "bad_request",
        "error": "malformed HTTP request: Invalid char in url query",
    }
    long_line = "Got more than 8190 bytes when reading: bytearray(b'/postback/?clickid=aaa...')."
    assert error_body(400, long_line)["error"] == (
        "malformed HTTP request: Got more than 8190 bytes when reading"
    )
    assert error_body(400, "Received HTTPS traffic on an HTTP port")["error"] == (
        "malformed HTTP request: Received HTTPS traffic on an HTTP port"
    )
    assert error_body(400, None)["error"] == "malformed HTTP request"
    assert error_body(400, "x" * 1000)["error"] == "malformed HTTP request: " + "x" * 200
    assert error_body(500, "boom") == {
        "success": False,
        "code": "internal",
        "error": "internal error",
    }
