"""``postback project`` sends the outbox, as ``serve`` does (``serve --no-projections``
plus ``project`` is a supported deployment), unless ``POSTBACK_OUTBOX=off``.

The log is written by the real app (``create_app``) with no projections running, so
nothing is sent in-process; then ``postback project`` runs as a subprocess and must
deliver the Contact to a real HTTP server on loopback playing Facebook, and record the
outcome in the log before it exits on SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from postback.app import create_app
from postback.backend import open_store
from postback.config import Config
from projections import delivery_payloads as p
from tests.postback.helpers import Api, World, chat
from tests.postback.outbox_support import (
    ManualClock,
    Receiver,
    Service,
    receiver_fixture,  # noqa: F401
    service_config,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0
"""A bound on each wait, to fail rather than hang; nothing waits for it to pass."""


async def _write_log(config: Config) -> World:
    """An account, a spot with Facebook configured, a subscriber and a chat Contact,
    through the real app, which neither projects nor sends (``run_projections=False``)."""
    app = create_app(config)
    async with TestClient(TestServer(app)) as client:
        svc = Service(client, Api(client), app, ManualClock())
        world = await svc.world()
        await svc.facebook(world.key, world.spot_id)
        status, body = await chat(client, user_id=world.user_id, spot=world.spot)
        assert status == 200, body
        return world


def _log_options(settings: dict[str, str]) -> list[str]:
    return ["--dsn", settings["dsn"]] if "dsn" in settings else ["--db", settings["db_path"]]


class Project:
    """``postback project OPTIONS`` as an asyncio subprocess, in an environment with no
    ``POSTBACK_*`` variable but ``env``; its stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._said = asyncio.Condition()
        self._ended = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, *options: str, env: dict[str, str]) -> Project:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("POSTBACK_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "postback",
            "project",
            *options,
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**clean, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env},
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            async with self._said:
                self.lines.append(line.decode().rstrip("\n"))
                self._said.notify_all()
        async with self._said:
            self._ended = True
            self._said.notify_all()

    async def said(self, text: str) -> str:
        """The first line holding ``text``; fails if the process ends first."""
        async with asyncio.timeout(TIMEOUT), self._said:
            while True:
                if found := [line for line in self.lines if text in line]:
                    return found[0]
                if self._ended:
                    raise AssertionError(f"project ended; it said: {self.lines}")
                await self._said.wait()

    async def stop(self) -> int:
        """SIGTERM, then its exit status (once it has said everything)."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            code = await self.process.wait()
            await self._reader
        return code

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def _events(settings: dict[str, str]) -> list[Any]:
    store = await open_store(Config(**settings), must_exist=True, poll_interval=None)
    try:
        return await store.read_all(0, 10_000)
    finally:
        await store.close()


async def test_project_sends_a_contact_to_facebook_and_records_the_outcome(
    log_settings: dict[str, str], receiver: Receiver
) -> None:
    world = await _write_log(service_config(log_settings, receiver, run_projections=False))
    assert receiver.requests == []

    project = await Project.start(
        *_log_options(log_settings), env={"POSTBACK_FACEBOOK_GRAPH_URL": receiver.url}
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            await receiver.wait_for(1, "facebook")
        await project.said("sending the outbox (Facebook, Telegram, webhooks) while leading")
        assert await project.stop() == 0  # the send under way is recorded before it exits
    finally:
        await project.close()
    assert any("projections stopped at position" in line for line in project.lines)

    events = await _events(log_settings)
    contact = next(e for e in events if e.type == "ContactRecorded")
    [sent] = receiver.requests
    assert sent.kind == "facebook"
    assert sent.path == "/v21.0/PIXEL1/events"
    assert sent.query == {"access_token": "EAAB-token"}
    [data] = sent.json["data"]
    assert data["event_name"] == "Contact"
    assert data["event_id"] == str(contact.event_id)
    assert data["user_data"]["external_id"] == [hashlib.sha256(world.user_id.encode()).hexdigest()]

    outcomes = [e for e in events if e.type.startswith("Delivery")]
    assert [e.type for e in outcomes] == [p.DELIVERY_ATTEMPTED, p.DELIVERY_SUCCEEDED]
    for outcome in outcomes:
        assert outcome.data["channel"] == p.FACEBOOK
        assert outcome.data["source_event_id"] == str(contact.event_id)
        assert outcome.data["subscriber_id"] == world.subscriber_id


async def test_project_with_the_outbox_off_says_it_does_not_send(tmp_path: Path) -> None:
    project = await Project.start("--db", str(tmp_path / "log.db"), env={"POSTBACK_OUTBOX": "off"})
    try:
        line = await project.said("postback: the outbox is off")
        assert line.endswith(
            "the outbox is off (POSTBACK_OUTBOX=off): nothing is sent from this process"
        )
        assert await project.stop() == 0
    finally:
        await project.close()
    assert not any("sending the outbox" in line for line in project.lines)
