"""The access log: one JSON object per request and per line, the lines of one turn of the
event loop written together at its end (postback/access_log.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from postback.access_log import JsonAccessLogger
from postback.app import create_app
from postback.config import Config
from postback.server import make_runner


def _log(logger: logging.Logger, path: str, status: int = 200) -> None:
    request = make_mocked_request("GET", path, headers={"User-Agent": "partner/1.0"})
    JsonAccessLogger(logger, "").log(request, web.Response(status=status), 0.0012345)


def _lines(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    records = [r for r in caplog.records if r.name == name]
    return [orjson.loads(line) for r in records for line in r.getMessage().splitlines()]


async def test_the_lines_of_one_turn_are_written_together_at_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.access.turn")
    with caplog.at_level(logging.INFO, logger=logger.name):
        for path in ("/a", "/b", "/c"):
            _log(logger, path)
        assert [r for r in caplog.records if r.name == logger.name] == []  # not yet
        await asyncio.sleep(0)  # the turn ends
        records = [r for r in caplog.records if r.name == logger.name]
        assert len(records) == 1
        _log(logger, "/d", 404)
        await asyncio.sleep(0)
    lines = _lines(caplog, logger.name)
    assert [line["path"] for line in lines] == ["/a", "/b", "/c", "/d"]
    assert lines[3] == {
        "remote": None,  # a mocked request has no peer
        "method": "GET",
        "path": "/d",
        "status": 404,
        "bytes": 0,
        "ms": 1.234,
        "user_agent": "partner/1.0",
    }


def test_lines_left_by_a_loop_that_ended_are_written_by_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.access.loops")

    with caplog.at_level(logging.INFO, logger=logger.name):
        ended = asyncio.new_event_loop()

        def log_and_stop() -> None:
            _log(logger, "/first")
            ended.stop()  # the write scheduled for the end of this turn never runs

        ended.call_soon(log_and_stop)
        ended.run_forever()
        ended.close()
        assert _lines(caplog, logger.name) == []

        async def next_loop() -> None:
            _log(logger, "/second")
            await asyncio.sleep(0)

        asyncio.run(next_loop())
    assert [line["path"] for line in _lines(caplog, logger.name)] == ["/first", "/second"]


def test_no_lines_are_made_for_a_logger_that_is_off() -> None:
    logger = logging.getLogger("test.access.off")
    logger.setLevel(logging.WARNING)
    assert not JsonAccessLogger(logger, "").enabled
    logger.setLevel(logging.INFO)
    assert JsonAccessLogger(logger, "").enabled


async def test_serve_logs_every_request_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the runner ``postback serve`` uses: concurrent requests on several
    connections, each in the access log once."""
    app = create_app(Config(db_path=str(tmp_path / "t.db"), run_projections=False))
    runner = make_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            connector = aiohttp.TCPConnector(limit=8)
            async with aiohttp.ClientSession(connector=connector) as http:

                async def get(i: int) -> int:
                    async with http.get(f"{base}/postback", params={"n": str(i)}) as response:
                        await response.read()
                        return response.status

                statuses = await asyncio.gather(*(get(i) for i in range(40)))
            await asyncio.sleep(0)
    finally:
        await runner.cleanup()
    assert statuses == [400] * 40  # no clickid
    lines = _lines(caplog, "aiohttp.access")
    assert len(lines) == 40
    assert {line["path"] for line in lines} == {"/postback"}
    assert {line["status"] for line in lines} == {400}
    assert {line["remote"] for line in lines} == {"127.0.0.1"}
