"""Every ``postback`` command on PostgreSQL (``--dsn`` / ``POSTBACK_DSN``), as on SQLite.

Each test gets a fresh schema (``pg_schema``; skipped without a server, failed under
``POSTBACK_REQUIRE_POSTGRES=1``). Commands run in-process through ``postback.cli.main``
(``project`` as a subprocess). Where the output must equal SQLite's, the same log is on
both: written by the same requests, or copied row for row (``iter_raw``/``import_raw``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from eventstore.postgres import PostgresEventStore
from eventstore.sqlite import SQLiteEventStore
from postback import cli_rebuild
from postback.app import create_app
from postback.config import Config
from projections import pg_database
from projections.catalog import all_projections
from tests import pg
from tests.postback.helpers import bearer, postback
from tests.postback.test_cli_analyst import (
    LINE_TIMEOUT,
    Project,
    build_log,
    fail_the_child_of,
    run,
)

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def dsn(pg_schema: str) -> str:
    """A DSN whose ``search_path`` is this test's fresh (empty) schema."""
    return pg.dsn_for(pg_schema)


@pytest.fixture
def pg_log(dsn: str) -> str:
    """``dsn`` holding the small log of :func:`build_log`, written by the real service."""
    asyncio.run(build_log(Config(dsn=dsn)))
    return dsn


def sql(dsn: str, statement: str, *args: Any) -> list[Any]:
    """Run one statement on ``dsn`` with asyncpg (behind the service's back)."""

    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(row) for row in await conn.fetch(statement, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


async def copy_log(db: str, dsn: str, until: int | None = None) -> int:
    """The SQLite log ``db`` (up to ``until``) imported row for row into ``dsn``."""
    source = await SQLiteEventStore.open(db, poll_interval=None)
    target = await PostgresEventStore.open(dsn)
    try:
        last = 0
        async for batch in source.iter_raw(batch_size=4):
            rows = [row for row in batch if until is None or row.position <= until]
            if rows:
                last = await target.import_raw(rows)
        return last
    finally:
        await target.close()
        await source.close()


def head_line(out: str) -> str:
    match = re.search(r"^log: head position \d+, hash [0-9a-f]{64}$", out, re.MULTILINE)
    assert match is not None, out
    return match.group(0)


async def _call(config: Config, method: str, path: str, key: str | None = None) -> int:
    async with TestClient(TestServer(create_app(config))) as client:
        headers = bearer(key) if key is not None else {}
        async with client.request(method, path, headers=headers, json={"title": "t"}) as answer:
            return answer.status


# -- account create, demo: on either backend --------------------------------------------------


def _log_options(settings: dict[str, str]) -> list[str]:
    return ["--dsn", settings["dsn"]] if "dsn" in settings else ["--db", settings["db_path"]]


def test_account_create_then_the_account_exists(
    capsys: Capsys, log_settings: dict[str, str]
) -> None:
    code, out, err = run(capsys, "account", "create", "Acme", *_log_options(log_settings))
    assert code == 0, err
    match = re.fullmatch(r"account 1 created\napi key: (\S+)\n", out)
    assert match is not None, out
    code, out, _ = run(capsys, "account", "create", "Beta", *_log_options(log_settings))
    assert code == 0
    assert out.startswith("account 2 created")
    # The key works against the service on the same log: the account is there.
    config = Config(**log_settings)
    assert asyncio.run(_call(config, "POST", "/api/v1/spots", match.group(1))) == 201
    assert asyncio.run(_call(config, "POST", "/api/v1/spots", "not-a-key")) == 401


@pytest.mark.parametrize(
    ("name", "said"),
    [("", "needs a name"), ("x" * 257, "at most 256"), ("bad\udcff", "not valid UTF-8")],
    ids=["empty", "too-long", "not-utf8"],
)
def test_account_create_refuses_what_the_http_api_refuses(
    capsys: Capsys, log_settings: dict[str, str], name: str, said: str
) -> None:
    with pytest.raises(SystemExit) as usage:  # argparse's bad usage
        run(capsys, "account", "create", name, *_log_options(log_settings))
    out, err = capsys.readouterr()
    assert (usage.value.code, out) == (2, "")
    assert said in err
    code, out, err = run(capsys, "account", "create", "x" * 256, *_log_options(log_settings))
    assert code == 0, err
    assert out.startswith("account 1 created")  # none was created before


def test_demo_seeds_what_it_prints(capsys: Capsys, log_settings: dict[str, str]) -> None:
    code, out, err = run(capsys, "demo", *_log_options(log_settings))
    assert code == 0, err
    where = log_settings.get("dsn", log_settings.get("db_path"))
    assert f"Demo data in {where}:" in out
    clickid = re.search(r"clickid=(DEMO-[0-9a-f]+)&goal=reg", out)
    assert clickid is not None, out

    async def send() -> tuple[int, Any]:
        config = Config(**log_settings)
        async with TestClient(TestServer(create_app(config))) as client:
            return await postback(client, clickid=clickid.group(1), goal="reg")

    status, body = asyncio.run(send())
    assert status == 200, body
    code, out, _ = run(capsys, "stats", "--json", "--group-by", "goal", *_log_options(log_settings))
    assert code == 0
    assert json.loads(out)["rows"] == [
        {"goal": "reg", "count": 1, "unique_subscribers": 1, "sum": "0.00"}
    ]


# -- stats and export: the same output as on SQLite -------------------------------------------

STATS_FLAGS = [
    ["--group-by", "goal"],
    ["--group-by", "goal,spot", "--json"],
    ["--json", "--tz", "Asia/Kolkata", "--account", "1"],
    ["--account", "2"],
    ["--json", "--as-of", "2000-01-01T00:00:00Z"],
]


def test_stats_equal_sqlite_on_a_log_written_by_the_same_requests(
    capsys: Capsys, tmp_path: Path, pg_log: str
) -> None:
    db = str(tmp_path / "same.db")
    asyncio.run(build_log(Config(db_path=db)))
    for flags in STATS_FLAGS:
        on_sqlite = run(capsys, "stats", "--db", db, *flags)
        on_postgres = run(capsys, "stats", "--dsn", pg_log, *flags)
        assert on_sqlite[0] == on_postgres[0] == 0, (flags, on_postgres)
        assert on_postgres[1] == on_sqlite[1], flags
    code, out, _ = run(capsys, "stats", "--dsn", pg_log, "--group-by", "goal")
    assert code == 0
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:]}
    assert lines["dep"] == ["1", "1", "100.50"]
    assert lines["reg"] == ["2", "2", "0.00"]


def test_stats_and_export_equal_sqlite_on_a_copied_log(
    capsys: Capsys, tmp_path: Path, dsn: str
) -> None:
    db = str(tmp_path / "copied.db")
    asyncio.run(build_log(Config(db_path=db)))
    last = asyncio.run(copy_log(db, dsn))
    assert last > 10
    exports = run(capsys, "export", "--db", db)
    assert len(exports[1].splitlines()) == last
    middle = json.loads(exports[1].splitlines()[last // 2])["recorded_at"]
    variants: list[list[str]] = [
        [],
        ["--format", "csv"],
        ["--after", "5"],
        ["--until", middle, "--format", "csv"],
    ]
    for flags in variants:
        on_sqlite = run(capsys, "export", "--db", db, *flags)
        on_postgres = run(capsys, "export", "--dsn", dsn, *flags)
        assert on_sqlite == on_postgres, flags
    rows = list(
        csv.DictReader(io.StringIO(run(capsys, "export", "--dsn", dsn, "--format", "csv")[1]))
    )
    assert [int(row["position"]) for row in rows] == list(range(1, last + 1))
    for flags in [*STATS_FLAGS, ["--group-by", "day,goal", "--tz", "America/New_York"]]:
        assert run(capsys, "stats", "--db", db, *flags) == run(
            capsys, "stats", "--dsn", dsn, *flags
        )


# -- rebuild, verify --------------------------------------------------------------------------


def test_rebuild_all_and_unknown(capsys: Capsys, pg_log: str, pg_schema: str) -> None:
    (last,) = sql(pg_log, "SELECT position FROM chain_head")[0]
    code, out, err = run(capsys, "rebuild", "--dsn", pg_log)
    assert code == 0, err
    names = ", ".join(p.name for p in all_projections())
    assert f"rebuilt {names} from {last:,} events" in out
    assert f"into {pg_log} (schema {pg_schema})" in out
    assert f"{last:,}/{last:,} (100%)" in err
    checkpoints = dict(sql(pg_log, "SELECT name, position FROM projection_checkpoints"))
    assert checkpoints == {p.name: last for p in all_projections()}
    code, _, err = run(capsys, "rebuild", "--dsn", pg_log, "goal_stats", "nope")
    assert code == 2
    assert "unknown projection nope" in err


@pytest.fixture
def made_schemas(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the temporary schemas (rebuild's shadows, verify's replays) this test
    makes: only those, since another test run may be using the same database."""
    made: list[str] = []
    real = pg_database.temporary_schema

    @contextlib.asynccontextmanager
    async def recorded(dsn: str, prefix: str = "projections_tmp_") -> AsyncIterator[str]:
        async with real(dsn, prefix) as name:
            made.append(name)
            yield name

    monkeypatch.setattr(pg_database, "temporary_schema", recorded)
    return made


def left_behind(dsn: str, schemas: list[str]) -> list[Any]:
    return sql(dsn, "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)", schemas)


@pytest.mark.parametrize("jobs", ["1", "2", "3"])
def test_rebuild_in_place_or_in_shadow_schemas_equals_a_replay(
    capsys: Capsys, pg_log: str, jobs: str, made_schemas: list[str]
) -> None:
    assert run(capsys, "verify", "--dsn", pg_log, "--jobs", "1")[0] == 0  # builds them
    sql(pg_log, "UPDATE goal_stats_hourly SET count = count + 5")
    sql(pg_log, "DELETE FROM subscribers")
    code, out, err = run(capsys, "rebuild", "--dsn", pg_log, "--jobs", jobs)
    assert code == 0, err
    if jobs == "1":
        assert "processes" not in out
    else:
        assert f"({jobs} processes)" in out
    assert run(capsys, "verify", "--dsn", pg_log, "--jobs", "1")[0] == 0
    shadows = [name for name in made_schemas if name.startswith("postback_rebuild_")]
    assert len(shadows) == (0 if jobs == "1" else int(jobs))
    assert left_behind(pg_log, made_schemas) == []


def test_a_failed_shadow_leaves_the_projections_as_they_were_on_postgres(
    capsys: Capsys, pg_log: str, monkeypatch: pytest.MonkeyPatch, made_schemas: list[str]
) -> None:
    assert run(capsys, "verify", "--dsn", pg_log, "--jobs", "1")[0] == 0  # builds them
    sql(pg_log, "UPDATE goal_stats_hourly SET count = count + 5")
    stale = sorted(sql(pg_log, "SELECT * FROM goal_stats_hourly"))
    subscribers = sorted(sql(pg_log, "SELECT * FROM subscribers"))
    made_schemas.clear()  # verify's
    fail_the_child_of(monkeypatch, "subscribers", status=3)
    code, _, err = run(capsys, "rebuild", "--dsn", pg_log, "--jobs", "2")
    assert code == 1
    assert "exited with status 3" in err
    assert "the projections are as they were" in err
    assert sorted(sql(pg_log, "SELECT * FROM goal_stats_hourly")) == stale
    assert sorted(sql(pg_log, "SELECT * FROM subscribers")) == subscribers
    assert len(made_schemas) == 2
    assert left_behind(pg_log, made_schemas) == []


def test_shadow_children_get_the_dsn_in_their_environment_not_their_arguments(
    pg_log: str,
) -> None:
    config = Config(dsn=pg_log)
    command = cli_rebuild.shadow_command(config, ["subscribers"], "schema_x", 10, 500)
    assert not any(pg_log in argument or "--db" in argument for argument in command)
    assert "--shadow=schema_x" in command
    assert cli_rebuild.shadow_environment(config)["POSTBACK_DSN"] == pg_log
    sqlite = Config(db_path="-odd.db")
    assert "--db=-odd.db" in cli_rebuild.shadow_command(sqlite, ["profiles"], "s.db", 10, 500)


def test_a_shadow_child_refuses_a_schema_that_holds_tables(
    capsys: Capsys, pg_log: str, pg_schema: str
) -> None:
    shadow = ["--shadow", pg_schema, "--until", "3", "profiles"]
    code, _, err = run(capsys, "rebuild", "--dsn", pg_log, *shadow)
    assert code == 2
    assert "--shadow needs an empty schema" in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_verify_in_children_names_a_tampered_row(
    capsys: Capsys, pg_log: str, jobs: str, made_schemas: list[str]
) -> None:
    assert run(capsys, "verify", "--dsn", pg_log, "--jobs", jobs)[0] == 0
    sql(
        pg_log,
        "DELETE FROM profiles WHERE subscriber_id = (SELECT MIN(subscriber_id) FROM profiles)",
    )
    code, out, _ = run(capsys, "verify", "--dsn", pg_log, "--jobs", jobs)
    assert code == 1
    assert "profiles.profiles: 1 missing" in out
    assert "verify: FAILED (projections differ: profiles)" in out
    assert len(made_schemas) == 2 * int(jobs)
    assert left_behind(pg_log, made_schemas) == []


def test_verify_passes_then_names_a_tampered_projection_row(
    capsys: Capsys, pg_log: str, made_schemas: list[str]
) -> None:
    code, out, _ = run(capsys, "verify", "--dsn", pg_log)
    assert code == 0, out
    assert "verify: OK" in out
    for projection in all_projections():
        assert f"{projection.name}: ok" in out
    (last,) = sql(pg_log, "SELECT position FROM chain_head")[0]
    anchor = re.search(r"--anchor (\d+:[0-9a-f]{64})", out)
    assert anchor is not None
    assert anchor.group(1).startswith(f"{last}:")
    assert run(capsys, "verify", "--dsn", pg_log, "--anchor", anchor.group(1))[0] == 0

    key = sql(pg_log, "SELECT account_id, spot_id, goal, hour_us FROM goal_stats_hourly")[0]
    sql(
        pg_log,
        "UPDATE goal_stats_hourly SET count = count + 5"
        " WHERE account_id = $1 AND spot_id = $2 AND goal = $3 AND hour_us = $4",
        *key,
    )
    code, out, _ = run(capsys, "verify", "--dsn", pg_log)
    assert code == 1
    assert "goal_stats: DIFFERS" in out
    assert "goal_stats.goal_stats_hourly: 1 changed" in out
    account_id, spot_id, goal, hour_us = key
    assert (
        f"changed row (account_id={account_id}, spot_id={spot_id}, goal={goal!r},"
        f" hour_us={hour_us}): count: live " in out
    )
    assert "verify: FAILED (projections differ: goal_stats)" in out
    # The replay's temporary schemas are gone.
    assert made_schemas
    assert left_behind(pg_log, made_schemas) == []

    assert run(capsys, "rebuild", "--dsn", pg_log, "goal_stats")[0] == 0
    assert run(capsys, "verify", "--dsn", pg_log)[0] == 0


def test_verify_names_a_tampered_event_row(capsys: Capsys, pg_log: str) -> None:
    assert run(capsys, "verify", "--dsn", pg_log)[0] == 0
    ((position, data),) = sql(
        pg_log,
        "SELECT position, data FROM events WHERE type = 'GoalReached' ORDER BY position LIMIT 1",
    )
    forged = json.loads(data)
    forged["goal"] = "dep"
    sql(
        pg_log,
        "UPDATE events SET data = $1 WHERE position = $2",
        json.dumps(forged).encode(),
        position,
    )
    code, out, _ = run(capsys, "verify", "--dsn", pg_log)
    assert code == 1
    assert f"log: TAMPERED at position {position}: hash_mismatch" in out
    assert f"log tampered at position {position}" in out
    assert "goal_stats: DIFFERS" in out  # the live rows were built from the original


def test_verify_notices_events_deleted_from_the_end(capsys: Capsys, pg_log: str) -> None:
    assert run(capsys, "verify", "--dsn", pg_log)[0] == 0
    (last,) = sql(pg_log, "SELECT MAX(position) FROM events")[0]
    sql(pg_log, "DELETE FROM events WHERE position = $1", last)
    code, out, _ = run(capsys, "verify", "--dsn", pg_log)
    assert code == 1
    assert "truncated" in out
    assert f"projections are ahead of the log ({last:,} > {last - 1:,})" in out


def test_the_environment_names_the_log_and_db_wins_over_it(
    capsys: Capsys, pg_log: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTBACK_DSN", pg_log)
    code, out, _ = run(capsys, "verify")
    assert code == 0, out
    db = str(tmp_path / "other.db")
    assert run(capsys, "account", "create", "Local", "--db", db)[0] == 0
    code, out, _ = run(capsys, "export", "--db", db)
    assert code == 0
    assert len(out.splitlines()) == 1  # the file's one event, not the PostgreSQL log


# -- project ----------------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[Project]]:
    started: list[Project] = []
    yield started
    for process in started:
        process.close()


def test_project_catches_up_follows_and_stops_on_sigint(
    capsys: Capsys, pg_log: str, processes: list[Project]
) -> None:
    (first,) = sql(pg_log, "SELECT position FROM chain_head")[0]
    process = Project("--dsn", pg_log, "--batch-size", "3")
    processes.append(process)
    process.wait_for(rf"caught up at position {first:,}")
    assert run(capsys, "account", "create", "Later", "--dsn", pg_log)[0] == 0
    process.wait_for(rf"caught up at position {first + 1:,}")
    process.process.send_signal(signal.SIGINT)
    assert process.process.wait(timeout=LINE_TIMEOUT) == 0
    process.wait_for(rf"stopped at position {first + 1:,}")
    checkpoints = dict(sql(pg_log, "SELECT name, position FROM projection_checkpoints"))
    assert set(checkpoints.values()) == {first + 1}
    assert run(capsys, "verify", "--dsn", pg_log)[0] == 0


def test_project_beside_a_leader_follows_then_takes_over(
    capsys: Capsys, pg_log: str, processes: list[Project]
) -> None:
    (first,) = sql(pg_log, "SELECT position FROM chain_head")[0]
    fast = {"POSTBACK_LEADER_RETRY": "0.1"}
    leader = Project("--dsn", pg_log, env=fast)
    processes.append(leader)
    leader.wait_for(rf"caught up at position {first:,}")
    follower = Project("--dsn", pg_log, env=fast)
    processes.append(follower)
    follower.wait_for(rf"another runner leads these projections.* at position {first:,}")
    leader.process.send_signal(signal.SIGTERM)
    assert leader.process.wait(timeout=LINE_TIMEOUT) == 0
    follower.wait_for(r"now leading the projections")
    assert run(capsys, "account", "create", "Later", "--dsn", pg_log)[0] == 0
    follower.wait_for(rf"caught up at position {first + 1:,}")
    follower.process.send_signal(signal.SIGTERM)
    assert follower.process.wait(timeout=LINE_TIMEOUT) == 0


# -- a log that cannot be opened --------------------------------------------------------------

COMMANDS = [
    ["account", "create", "X"],
    ["demo"],
    ["rebuild"],
    ["verify"],
    ["stats"],
    ["export"],
    ["project"],
    ["serve", "--port", "0"],
    ["migrate-to", "--db", "{db}"],
]


def _argv(command: list[str], db: str, dsn: str) -> list[str]:
    return [part.replace("{db}", db) for part in command] + ["--dsn", dsn]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_unreachable_server_is_one_clear_line(
    capsys: Capsys, tmp_path: Path, command: list[str]
) -> None:
    db = str(tmp_path / "log.db")
    assert run(capsys, "account", "create", "A", "--db", db)[0] == 0
    bad = "postgresql://postback:hunter2@127.0.0.1:1/nowhere"
    code, out, err = run(capsys, *_argv(command, db, bad))
    assert code == 2
    assert err.splitlines() == [
        "postback: cannot open the log at postgresql://postback:***@127.0.0.1:1/nowhere:"
        " PostgreSQL unreachable: ConnectionRefusedError: [Errno 111] Connect call failed"
        " ('127.0.0.1', 1)"
    ], err
    assert "hunter2" not in out + err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_missing_schema_is_one_clear_line(
    capsys: Capsys, tmp_path: Path, dsn: str, command: list[str]
) -> None:
    db = str(tmp_path / "log.db")
    assert run(capsys, "account", "create", "A", "--db", db)[0] == 0
    missing = pg.dsn_for("no_such_schema_here")
    code, _, err = run(capsys, *_argv(command, db, missing))
    assert code == 2
    assert err.splitlines() == [
        f"postback: cannot open the log at {missing}: no schema of the search_path"
        " (no_such_schema_here) exists: create it before opening the store"
    ], err


@pytest.mark.parametrize("command", ["verify", "stats", "export", "rebuild"])
def test_read_only_commands_do_not_create_a_log(
    capsys: Capsys, dsn: str, pg_schema: str, command: str
) -> None:
    code, out, err = run(capsys, command, "--dsn", dsn)
    assert code == 2
    assert out == ""
    assert err.startswith(f"postback: no log in {dsn}: schema {pg_schema} holds no event store")
    assert sql(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema) == []


def test_a_malformed_dsn_is_not_echoed(capsys: Capsys) -> None:
    code, out, err = run(capsys, "stats", "--dsn", "host=db password=hunter2")
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("postback: cannot open the log at the PostgreSQL DSN given")
    assert "hunter2" not in out + err
