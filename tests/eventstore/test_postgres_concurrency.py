"""Several instances (store objects, and another process) append to one stream at once.

Each contender reads the stream's version and appends with it as the expected version;
exactly one append wins per version, whichever instance made it, and afterwards the log
is gap-free and verifies.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

from eventstore.errors import ConcurrencyError
from tests.eventstore.helpers import assert_chain, assert_gap_free, new, read_everything
from tests.eventstore.pg_contender import CONTESTED, contend
from tests.eventstore.pg_helpers import open_store
from tests.pg import dsn_for

REPO = Path(__file__).resolve().parents[2]
TARGET = 60
WAIT = 30.0


async def test_one_winner_per_version_across_instances_and_a_process(pg_schema: str) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.eventstore.pg_contender",
        dsn_for(pg_schema),
        "child",
        str(TARGET),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        a, b = await open_store(pg_schema), await open_store(pg_schema)
        try:
            assert await asyncio.wait_for(child.stdout.readline(), WAIT) == b"ready\n"
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            parent_wins = await asyncio.gather(
                contend(a, "a1", TARGET),
                contend(a, "a2", TARGET),
                contend(b, "b1", TARGET),
                contend(b, "b2", TARGET),
            )
            out, _ = await asyncio.wait_for(child.communicate(), WAIT)
            assert child.returncode == 0
            *lines, last = out.decode().splitlines()
            assert last == "done"
            child_wins = [(int(v), uuid.UUID(i)) for v, i in (line.split() for line in lines)]

            wins = sorted([w for ws in parent_wins for w in ws] + child_wins)
            assert [version for version, _ in wins] == list(range(1, TARGET + 1))
            stream = await a.read_stream(CONTESTED)
            assert [(e.version, e.event_id) for e in stream] == wins

            # a stale expected version still loses, whoever asks
            with pytest.raises(ConcurrencyError) as caught:
                await b.append(CONTESTED, [new()], TARGET - 1)
            assert caught.value.actual == TARGET

            everything = await read_everything(a)
            assert_gap_free(everything)
            assert_chain(everything)
            assert await b.last_position() == len(everything)
            report = await b.verify()
            assert report.ok
            assert report.checked == len(everything)
        finally:
            await a.close()
            await b.close()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
