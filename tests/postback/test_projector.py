"""``postback serve`` runs the projections (and the outbox) in a child ``postback project
--supervised`` that it starts, restarts and stops: reads stay fresh, and the child never
outlives the server."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from eventstore.base import NewEvent
from eventstore.sqlite import SQLiteEventStore
from postback import cli
from postback.config import Config, ConfigError
from projections.runner import BUSY_BATCH
from tests.postback.servers import one_subscriber, start_server, stop_server

WAIT = 20.0


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _the_child(server: subprocess.Popen[str]) -> int:
    (child,) = _children(server.pid)
    assert _command_line(child)[-5:-2] == ["postback", "project", "--supervised"]
    return child


def _wait_for_exit(pid: int) -> None:
    """Until ``pid`` has ended (a pidfd becomes readable then), or fail after ``WAIT``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], WAIT)
        assert readable, f"process {pid} is still running"
    finally:
        os.close(fd)


async def _postback(http: aiohttp.ClientSession, base: str, **query: str) -> int:
    async with http.get(f"{base}/postback/", params={"clickid": "KID", **query}) as response:
        assert response.status == 200, await response.text()
        return int((await response.json())["position"])


async def _logged(http: aiohttp.ClientSession, base: str, auth: dict[str, str]) -> list[str]:
    """The goals of the postback log's rows for KID (a projection: the server answers once
    its child has applied the log up to now)."""
    params = {"clickid": "KID"}
    async with http.get(f"{base}/api/v1/postbacks", params=params, headers=auth) as response:
        assert response.status == 200
        return [row["goal"] for row in (await response.json())["postbacks"]]


@pytest.mark.slow
async def test_serve_projects_in_a_child_it_restarts_and_stops(tmp_path: Path) -> None:
    server, base = start_server(["--db", str(tmp_path / "kid.db")])
    try:
        child = _the_child(server)
        async with aiohttp.ClientSession() as http:
            auth = await one_subscriber(http, base, "KID")
            await _postback(http, base, goal="reg")
            position = await _postback(http, base, goal="dep", sum="100.50")
            # Read at once: the server waits for its child to have applied the deposit.
            assert await _logged(http, base, auth) == ["reg", "dep"]
            async with http.get(f"{base}/healthz") as response:
                health = await response.json()
            assert health["projections"] == {"position": position, "leader": True}  # its child
            async with http.get(f"{base}/metrics") as response:
                assert "postback_projection_lag_events 0.0" in await response.text()

            os.kill(child, signal.SIGKILL)  # the child dies: the server starts another
            _wait_for_exit(child)
            await _postback(http, base, goal="redep", sum="0.25")
            # Each listing waits up to 5 s for fresh projections; the new child starts 1 s
            # after the death, and later still on a loaded machine.
            deadline = time.monotonic() + WAIT
            while (logged := await _logged(http, base, auth)) != ["reg", "dep", "redep"]:
                assert time.monotonic() < deadline, logged
            replacement = _the_child(server)
            assert replacement != child
    finally:
        stop_server(server)
    assert server.returncode == 0
    _wait_for_exit(replacement)  # stopped with the server, not left behind


@pytest.mark.slow
async def test_a_read_hurries_a_child_in_its_live_pause(tmp_path: Path) -> None:
    """With an hour between the child's live transactions, a read that waits for fresh
    projections still gets them: the server tells its child to apply now (a ``!`` line).
    The log starts with ``BUSY_BATCH`` events, so the child's first transaction is a busy
    one, and it pauses after it."""
    db = str(tmp_path / "paused.db")
    async with await SQLiteEventStore.open(db) as store:
        await store.append("noise", [NewEvent("Noise", {"i": i}) for i in range(BUSY_BATCH)])
    server, base = start_server(["--db", db], env={"POSTBACK_PROJECTION_INTERVAL": "3600"})
    try:
        async with aiohttp.ClientSession() as http:
            auth = await one_subscriber(http, base, "KID")
            for goals in (["reg"], ["reg", "dep"], ["reg", "dep", "redep"]):
                await _postback(http, base, goal=goals[-1], sum="1")
                started = time.monotonic()
                # Unhurried, the child would apply in an hour; the listing waits 5 s at most.
                assert await _logged(http, base, auth) == goals
                assert time.monotonic() - started < 5.0
    finally:
        stop_server(server)
    assert server.returncode == 0


@pytest.mark.slow
def test_a_killed_server_takes_its_child_with_it(tmp_path: Path) -> None:
    server, _ = start_server(["--db", str(tmp_path / "orphan.db")])
    try:
        child = _the_child(server)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=WAIT)
        _wait_for_exit(child)  # its stdin closed with the server: it stopped
    finally:
        stop_server(server)


def test_serve_projects_in_a_child_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Config] = []

    async def fake_serve(config: Config) -> None:
        seen.append(config)

    monkeypatch.setattr(cli, "serve", fake_serve)
    monkeypatch.delenv("POSTBACK_PROJECTOR", raising=False)
    db = ["--db", str(tmp_path / "a.db")]
    assert cli.main(["serve", *db]) == 0
    assert cli.main(["serve", *db, "--projector", "inline"]) == 0
    monkeypatch.setenv("POSTBACK_PROJECTOR", "inline")
    assert cli.main(["serve", *db]) == 0
    assert cli.main(["serve", *db, "--projector", "process"]) == 0
    monkeypatch.setenv("POSTBACK_PROJECTOR", "sideways")
    assert cli.main(["serve", *db]) == 2
    assert [config.projector for config in seen] == ["process", "inline", "inline", "process"]
    assert Config().projector == "inline"  # the app factory's default: all in one process


def test_the_projection_interval_comes_from_the_environment() -> None:
    assert Config().projection_interval == 0.2
    assert Config.from_env({"POSTBACK_PROJECTION_INTERVAL": "0"}).projection_interval == 0.0
    assert Config.from_env({"POSTBACK_PROJECTION_INTERVAL": "1.5"}).projection_interval == 1.5
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(ConfigError):
            Config.from_env({"POSTBACK_PROJECTION_INTERVAL": bad})
