"""Two service processes on one SQLite file: racing postbacks still have one winner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.postback.servers import one_subscriber, start_server, stop_server


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    db = str(tmp_path / "shared.db")
    started = [start_server(["--db", db]), start_server(["--db", db])]
    try:
        yield started[0][1], started[1][1]
    finally:
        for process, _ in started:
            stop_server(process)


@pytest.mark.slow
async def test_racing_postbacks_across_two_processes_have_one_winner(
    two_servers: tuple[str, str],
) -> None:
    first, second = two_servers
    async with aiohttp.ClientSession() as http:
        auth = await one_subscriber(http, first, "RACE")

        async def send(base: str, goal: str) -> int:
            async with http.get(f"{base}/postback/", params={"clickid": "RACE", "goal": goal}) as r:
                await r.read()
                return r.status

        for goal in ("reg", "dep"):
            statuses = await asyncio.gather(
                *(send(first if i % 2 else second, goal) for i in range(40))
            )
            assert sorted(statuses) == [200] + [409] * 39, goal

        # The process that did not create the subscriber sees its whole history too.
        async with http.get(f"{second}/api/v1/subscribers/1", headers=auth) as r:
            view = await r.json()
        assert view["goals"]["reg"]["count"] == 1
        assert view["goals"]["dep"]["count"] == 1
