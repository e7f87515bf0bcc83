"""A txid retry racing its original in another process is answered like the first.

Two services with their own store on one SQLite file stand for two processes. The
interleaving is forced: B checks that no event has its txid yet, then A records the
same txid, then B goes on deciding and appending.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from eventstore.sqlite import SQLiteEventStore
from postback import commands
from postback.directory import Directory
from postback.model import Subscriber
from postback.service import Answer, PartnerRequest, PartnerService


def _request(**params: str) -> PartnerRequest:
    record: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "endpoint": "postback",
        "method": "GET",
        "path": "/postback/",
        "query": "&".join(f"{k}={v}" for k, v in params.items()),
        "body": "",
        "ip": "127.0.0.1",
        "received_at": "2026-11-24T00:00:00+00:00",
    }
    record.update({k: params.get(k) for k in ("clickid", "user_id", "spot", "goal", "txid")})
    return PartnerRequest(dict(params), record)


@pytest.mark.parametrize(
    ("goal", "state_cached"), [("redep", True), ("redep", False), ("reg", False)]
)
async def test_a_txid_retry_racing_another_process_is_answered_like_the_first(
    tmp_path: Path, goal: str, state_cached: bool
) -> None:
    path = tmp_path / "shared.db"
    async with (
        await SQLiteEventStore.open(path) as first_store,
        await SQLiteEventStore.open(path) as second_store,
    ):
        directory_a = Directory(first_store)
        await directory_a.load()
        account, _ = await commands.create_account(directory_a, "A")
        spot = await commands.create_spot(directory_a, account, "bot", "tok")
        subscriber = await commands.create_subscriber(directory_a, spot, "77", "CK")
        directory_b = Directory(second_store)
        await directory_b.load()
        service_a = PartnerService(first_store, directory_a)
        service_b = PartnerService(second_store, directory_b)
        if state_cached:
            await service_b._state(subscriber.id, reload=False)

        first_answers: list[Answer] = []
        check_txid = service_b._repeat_of

        async def check_then_let_a_record(
            who: Subscriber, txid: str, request: PartnerRequest
        ) -> Answer | None:
            found = await check_txid(who, txid, request)
            if found is None and not first_answers:
                original = _request(clickid="CK", goal=goal, sum="5", txid="T1")
                first_answers.append(await service_a.postback(original))
            return found

        service_b._repeat_of = check_then_let_a_record  # type: ignore[method-assign]
        retry = _request(clickid="CK", goal=goal, sum="5", txid="T1")
        answer = await service_b.postback(retry)

        assert first_answers[0].status == 200
        assert (answer.status, answer.body) == (first_answers[0].status, first_answers[0].body)
        log = await first_store.read_all(0, 1000)
        assert sum(e.type == "GoalReached" for e in log) == 1
        logged = [
            e.type
            for e in log
            if e.metadata.get("postback", {}).get("request_id") == retry.record["request_id"]
        ]
        assert logged == ["PostbackRepeated"]
