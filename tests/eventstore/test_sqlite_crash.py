"""Acknowledged appends survive the writer process being killed (SIGKILL) mid-stream."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from eventstore.sqlite import SQLiteEventStore
from tests.eventstore.helpers import assert_gap_free, read_everything

pytestmark = pytest.mark.slow

WRITER = Path(__file__).with_name("crash_writer.py")
REPO = Path(__file__).resolve().parents[2]
TASKS = 64
ACKS = 2000
DEADLINE = 60.0  # seconds to collect the acks; a healthy run needs one or two


def parse(lines: list[bytes]) -> list[tuple[int, uuid.UUID]]:
    acks = []
    for line in lines:
        position, event_id = line.split()
        acks.append((int(position), uuid.UUID(event_id.decode())))
    return acks


def collect_acks(child: subprocess.Popen[bytes], wanted: int, stderr: Path) -> list[bytes]:
    """Complete lines from the child's stdout until there are ``wanted`` (or the deadline)."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    lines: list[bytes] = []
    pending = b""
    deadline = time.monotonic() + DEADLINE
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while len(lines) < wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"only {len(lines)} acks in {DEADLINE} s")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                child.wait()
                pytest.fail(
                    f"the writer exited ({child.returncode}) after {len(lines)} acks:\n"
                    + stderr.read_text()
                )
            *complete, pending = (pending + chunk).split(b"\n")
            lines.extend(complete)
    return lines


def drain(child: subprocess.Popen[bytes]) -> list[bytes]:
    """The complete lines still in the pipe after the child died (acks too)."""
    assert child.stdout is not None
    rest = child.stdout.read()
    return rest.split(b"\n")[:-1]  # the last piece is a partial line or empty


def test_acknowledged_appends_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    stderr = tmp_path / "writer.stderr"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    with stderr.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(TASKS)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=tmp_path,
            bufsize=0,
        )
    try:
        lines = collect_acks(child, ACKS, stderr)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    lines.extend(drain(child))
    assert child.stdout is not None
    child.stdout.close()
    acks = parse(lines)
    assert len(acks) >= ACKS
    assert len({position for position, _ in acks}) == len(acks)

    asyncio.run(check_after_crash(path, acks))


async def check_after_crash(path: Path, acks: list[tuple[int, uuid.UUID]]) -> None:
    async with await SQLiteEventStore.open(path) as store:
        events = await read_everything(store, batch_size=1000)
        assert_gap_free(events)
        landed = {event.event_id: event.position for event in events}
        lost = [(p, i) for p, i in acks if landed.get(i) != p]
        assert not lost, f"{len(lost)} acknowledged appends lost or moved, e.g. {lost[:5]}"
        assert await store.last_position() == len(events) >= len(acks)
        report = await store.verify()
        assert report.ok, report.finding
        assert report.checked == len(events)
