"""The directory's catch-up: a lookup never answers "unknown" for something committed before it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from eventstore.base import RecordedEvent
from eventstore.sqlite import SQLiteEventStore
from postback import commands
from postback.directory import Directory
from postback.model import SUBSCRIBERS


async def test_a_miss_waiting_behind_an_older_catch_up_reads_again(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with (
        await SQLiteEventStore.open(path) as other_store,
        await SQLiteEventStore.open(path) as serving_store,
    ):
        operator_side = Directory(other_store)  # another process: the operator API
        await operator_side.load()
        account, _ = await commands.create_account(operator_side, "A")
        spot = await commands.create_spot(operator_side, account, "bot", "tok")
        serving = Directory(serving_store)  # the process serving postbacks
        await serving.load()

        release = asyncio.Event()
        first_read_done = asyncio.Event()
        read_stream = serving_store.read_stream

        async def held_read(stream: str, *args: Any, **kwargs: Any) -> list[RecordedEvent]:
            events = await read_stream(stream, *args, **kwargs)
            if stream == SUBSCRIBERS and not release.is_set():
                first_read_done.set()
                await release.wait()  # an ordinary scheduling delay, made certain
            return events

        serving_store.read_stream = held_read  # type: ignore[method-assign]
        older_miss = asyncio.create_task(serving.subscriber_by_clickid("NOBODY"))
        await first_read_done.wait()  # its read has happened: the new subscriber is not in it
        await commands.create_subscriber(operator_side, spot, "77", "NEWCK")
        newer_miss = asyncio.create_task(serving.subscriber_by_clickid("NEWCK"))
        for _ in range(5):  # let the newer miss queue behind the older catch-up
            await asyncio.sleep(0)
        release.set()

        assert await older_miss is None
        found = await newer_miss
        assert found is not None
        assert found.clickid == "NEWCK"
