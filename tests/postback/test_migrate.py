"""``postback migrate-to``: an SQLite log written by the real service, copied into PostgreSQL.

The source is built through the service (``create_app``) and the CLI (``account create``,
``demo``) on an SQLite file; the target is this test's fresh schema (``pg_schema``). After
the copy the two logs are one: the same head hash, the same stats and export, and
``serve --dsn`` carries on from the migrated state.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from eventstore.sqlite import SQLiteEventStore
from postback.app import create_app
from postback.config import Config
from projections.catalog import all_projections
from tests import pg
from tests.postback.helpers import ADMIN, Api, World, postback
from tests.postback.test_cli_analyst import build_log, run
from tests.postback.test_cli_postgres import copy_log, head_line, sql

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def dsn(pg_schema: str) -> str:
    return pg.dsn_for(pg_schema)


@pytest.fixture
def source(tmp_path: Path, capsys: Capsys) -> tuple[str, World]:
    """An SQLite log of several streams (accounts, spots, goals, subscribers, the
    subscribers' own), written by the service and the CLI."""
    db = str(tmp_path / "source.db")
    world = asyncio.run(build_log(Config(db_path=db)))
    assert run(capsys, "account", "create", "Second", "--db", db)[0] == 0
    assert run(capsys, "demo", "--db", db)[0] == 0
    return db, world


def _last(db: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT MAX(position) FROM events").fetchone()[0])
    finally:
        conn.close()


def _target_head(dsn: str) -> tuple[int, bytes]:
    ((position, digest),) = sql(dsn, "SELECT position, hash FROM chain_head")
    return int(position), bytes(digest)


def migrate(capsys: Capsys, db: str, dsn: str, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "migrate-to", "--db", db, "--dsn", dsn, *extra)


def test_the_migrated_log_is_the_same_log(
    capsys: Capsys, source: tuple[str, World], dsn: str
) -> None:
    db, _ = source
    last = _last(db)
    code, out, err = migrate(capsys, db, dsn, "--batch-size", "7")
    assert code == 0, err
    assert f"was empty; copied {last:,} events" in out
    assert f"projections: caught up at position {last:,}" in out
    assert "migrate-to: OK" in out
    assert f"migrate-to [##############################] {last:,}/{last:,}" in err
    streams = sql(dsn, "SELECT COUNT(*) FROM streams")[0][0]
    assert streams >= 8  # accounts, spots, subscribers, goals of 3 accounts, subscribers'

    on_sqlite = run(capsys, "verify", "--db", db)
    on_postgres = run(capsys, "verify", "--dsn", dsn)
    assert on_sqlite[0] == on_postgres[0] == 0, on_postgres[1]
    assert head_line(on_postgres[1]) == head_line(on_sqlite[1])
    assert f"head position {last}," in head_line(on_postgres[1])
    # An anchor taken on SQLite holds on PostgreSQL.
    anchor = re.search(r"--anchor (\S+)", on_sqlite[1])
    assert anchor is not None
    assert run(capsys, "verify", "--dsn", dsn, "--anchor", anchor.group(1))[0] == 0

    for flags in (
        ["--group-by", "goal"],
        ["--group-by", "day,goal,spot", "--json"],
        ["--json", "--tz", "Asia/Kolkata", "--account", "1"],
    ):
        assert run(capsys, "stats", "--dsn", dsn, *flags) == run(
            capsys, "stats", "--db", db, *flags
        )
    for flags in ([], ["--format", "csv"]):
        assert run(capsys, "export", "--dsn", dsn, *flags) == run(
            capsys, "export", "--db", db, *flags
        )


def test_a_second_run_copies_nothing(capsys: Capsys, source: tuple[str, World], dsn: str) -> None:
    db, _ = source
    assert migrate(capsys, db, dsn)[0] == 0
    head = _target_head(dsn)
    code, out, err = migrate(capsys, db, dsn)
    assert code == 0, err
    assert f"held {head[0]:,} events of this log; copied 0 events: nothing left to copy" in out
    assert _target_head(dsn) == head
    assert "projections [" not in err  # nothing to apply either

    # After a serve on PostgreSQL has appended, the SQLite log is still all there.
    assert run(capsys, "account", "create", "Later", "--dsn", dsn)[0] == 0
    code, out, _ = migrate(capsys, db, dsn)
    assert code == 0
    last = head[0]
    assert f"held {last + 1:,} events, of which the first {last:,} are this log's" in out
    assert "copied 0 events" in out
    assert "(1 event appended there after this log's head)" in out


def test_an_interrupted_migration_resumes(
    capsys: Capsys, source: tuple[str, World], dsn: str
) -> None:
    db, _ = source
    last = _last(db)
    prefix = last // 2
    assert asyncio.run(copy_log(db, dsn, until=prefix)) == prefix
    code, out, err = migrate(capsys, db, dsn, "--batch-size", "4")
    assert code == 0, err
    assert f"held {prefix:,} events of this log; copied {last - prefix:,} events" in out
    verified = run(capsys, "verify", "--dsn", dsn)
    assert verified[0] == 0, verified[1]
    assert head_line(verified[1]) == head_line(run(capsys, "verify", "--db", db)[1])


def test_a_target_holding_another_log_is_refused(
    capsys: Capsys, source: tuple[str, World], dsn: str, tmp_path: Path
) -> None:
    db, _ = source
    other = str(tmp_path / "other.db")
    for name in ("Other", "Logs", "Here"):
        assert run(capsys, "account", "create", name, "--db", other)[0] == 0
    assert migrate(capsys, other, dsn)[0] == 0
    head = _target_head(dsn)
    count = sql(dsn, "SELECT COUNT(*) FROM events")[0][0]

    code, out, err = migrate(capsys, db, dsn)
    assert code == 1
    assert "migrate-to refused: the target already holds 3 events that are not the first 3" in err
    assert "migrate-to: OK" not in out
    assert _target_head(dsn) == head
    assert sql(dsn, "SELECT COUNT(*) FROM events")[0][0] == count

    # Nor is a longer log that does not start with this one.
    assert migrate(capsys, other, dsn)[0] == 0  # the same log again: fine
    small = str(tmp_path / "small.db")
    assert run(capsys, "account", "create", "Small", "--db", small)[0] == 0
    code, _, err = migrate(capsys, small, dsn)
    assert code == 1
    assert "the target already holds 3 events that are not this log" in err
    assert _target_head(dsn) == head


def test_a_tampered_source_is_refused_and_the_target_untouched(
    capsys: Capsys, source: tuple[str, World], dsn: str, pg_schema: str
) -> None:
    db, _ = source
    conn = sqlite3.connect(db)
    try:
        position, data = conn.execute(
            "SELECT position, data FROM events WHERE type = 'GoalReached' LIMIT 1"
        ).fetchone()
        forged = json.loads(data)
        forged["amount"] = "1000000.00"
        conn.execute(
            "UPDATE events SET data = ? WHERE position = ?", (json.dumps(forged), position)
        )
        conn.commit()
    finally:
        conn.close()
    code, out, err = migrate(capsys, db, dsn)
    assert code == 1
    assert f"fails verification: hash_mismatch at position {position}" in err
    assert out == ""
    assert sql(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema) == []


def test_a_tampered_target_is_refused(capsys: Capsys, source: tuple[str, World], dsn: str) -> None:
    db, _ = source
    prefix = asyncio.run(copy_log(db, dsn, until=5))
    sql(dsn, "UPDATE events SET recorded_us = recorded_us + 1 WHERE position = 2")
    code, _, err = migrate(capsys, db, dsn)
    assert code == 1
    assert "the target holds a log that fails verification: hash_mismatch at position 2" in err
    assert _target_head(dsn)[0] == prefix


def test_usage_and_connection_errors_exit_2(
    capsys: Capsys, source: tuple[str, World], dsn: str, tmp_path: Path
) -> None:
    db, _ = source
    code, _, err = run(capsys, "migrate-to", "--db", db)
    assert code == 2
    assert "migrate-to needs --dsn (or POSTBACK_DSN)" in err
    code, _, err = migrate(capsys, str(tmp_path / "absent.db"), dsn)
    assert code == 2
    assert f"no log at {tmp_path / 'absent.db'}" in err
    with pytest.raises(SystemExit) as usage:
        migrate(capsys, db, dsn, "--batch-size", "0")
    assert usage.value.code == 2
    assert "--batch-size: must be at least 1" in capsys.readouterr().err


def test_without_projections_rebuild_builds_them(
    capsys: Capsys,
    source: tuple[str, World],
    dsn: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, _ = source
    monkeypatch.setenv("POSTBACK_DSN", dsn)
    monkeypatch.setenv("POSTBACK_DB", db)
    code, out, _ = run(capsys, "migrate-to", "--no-projections")
    assert code == 0
    assert "projections: not built (--no-projections)" in out
    tables = {
        row[0]
        for row in sql(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema)
    }
    assert "projection_checkpoints" not in tables
    code, out, _ = run(capsys, "rebuild")
    assert code == 0
    checkpoints = dict(sql(dsn, "SELECT name, position FROM projection_checkpoints"))
    assert checkpoints == {p.name: _last(db) for p in all_projections()}


async def _serve_migrated(dsn: str, world: World) -> None:
    config = Config(dsn=dsn, admin_token=ADMIN)
    async with TestClient(TestServer(create_app(config))) as client:
        api = Api(client)
        # The migrated subscriber, its history and its API key carry on.
        status, body = await postback(client, clickid=world.clickid, goal="dep", sum="5")
        assert status == 409, body  # deposit_already: made on SQLite
        assert body["code"] == "deposit_already"
        status, body = await postback(client, clickid=world.clickid, goal="redep", sum="7.5")
        assert status == 200, body
        subscriber = await api.subscriber(world.key, world.subscriber_id)
        assert subscriber["clickid"] == world.clickid
        history = await api.history(world.key, world.subscriber_id)
        goals = [event["data"].get("goal") for event in history if event["type"] == "GoalReached"]
        assert goals == ["reg", "dep", "redep", "redep"]
        rows = await api.postbacks(world.key, clickid=world.clickid)
        assert sorted(row["status"] for row in rows) == [200, 200, 200, 200, 409]


def test_serve_on_the_migrated_schema_answers_for_migrated_subscribers(
    capsys: Capsys, source: tuple[str, World], dsn: str
) -> None:
    db, world = source
    assert migrate(capsys, db, dsn)[0] == 0
    asyncio.run(_serve_migrated(dsn, world))
    code, out, _ = run(capsys, "stats", "--dsn", dsn, "--json", "--group-by", "goal")
    assert code == 0
    redep = [row for row in json.loads(out)["rows"] if row["goal"] == "redep"]
    assert redep == [{"goal": "redep", "count": 2, "unique_subscribers": 1, "sum": "7.75"}]
    assert run(capsys, "verify", "--dsn", dsn)[0] == 0


def test_migrating_an_empty_log(capsys: Capsys, tmp_path: Path, dsn: str) -> None:
    db = str(tmp_path / "empty.db")

    async def create() -> None:
        store = await SQLiteEventStore.open(db, poll_interval=None)
        await store.close()

    asyncio.run(create())
    code, out, err = migrate(capsys, db, dsn)
    assert code == 0, err
    assert "was empty; copied 0 events" in out
    assert _target_head(dsn)[0] == 0
