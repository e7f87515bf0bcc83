"""``postback rebuild / verify / stats / export / project`` on a log the real service wrote.

The log is built by the real app (``create_app``) through an aiohttp test client, then the
commands run in-process through ``postback.cli.main`` (``project`` as a subprocess). These
run on SQLite; tests/postback/test_cli_postgres.py runs the same commands on PostgreSQL
with the helpers defined here (:func:`build_log`, :func:`run`, :class:`Project`).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from eventstore.base import NewEvent
from eventstore.sqlite import SQLiteEventStore
from postback import cli, cli_rebuild, cli_verify
from postback.app import create_app
from postback.cli_progress import ProgressBar
from postback.config import Config
from projections.catalog import all_projections
from projections.runner import projections_path
from projections.shadow import plan_shards
from tests.postback.helpers import ADMIN, Api, World, make_world, postback, send

REPO = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 30.0


async def build_log(config: Config) -> World:
    """A small log written by the real service on ``config``'s backend: two accounts' worth
    of requests (one account with a spot, a goal and two subscribers; goals, a refused
    postback, a chat Contact). The same requests give the same events on either backend."""
    config = dataclasses.replace(config, admin_token=ADMIN)
    async with TestClient(TestServer(create_app(config))) as client:
        api = Api(client)
        world = await make_world(api)
        other = await api.create_subscriber(world.key, world.spot, "9001", "XYZ")
        assert (await postback(client, clickid=world.clickid, goal="reg"))[0] == 200
        sent = await postback(client, clickid=world.clickid, goal="dep", sum="100.50")
        assert sent[0] == 200
        assert (await postback(client, clickid=world.clickid, goal="redep", sum="0.25"))[0] == 200
        assert (await postback(client, clickid="XYZ", goal="reg"))[0] == 200
        assert (await postback(client, clickid="XYZ", goal="level10", sum="1"))[0] == 200
        assert (await postback(client, clickid="nobody", goal="reg"))[0] == 404
        chat = {"user_id": world.user_id, "spot": world.spot}
        assert (await send(client, "/spot/postback/chat/", chat))[0] == 200
        assert other["id"] == world.subscriber_id + 1
        return world


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "log.db")
    asyncio.run(build_log(Config(db_path=path)))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``postback ARGV`` in-process: (exit status, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _sql(path: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def _export(capsys: pytest.CaptureFixture[str], db: str, *extra: str) -> list[dict[str, Any]]:
    code, out, _ = run(capsys, "export", "--db", db, *extra)
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


# -- verify ---------------------------------------------------------------------------------


def fail_the_child_of(monkeypatch: pytest.MonkeyPatch, projection: str, status: int) -> None:
    """The shadow child of ``projection``'s group (rebuild's or verify's) exits ``status``
    at once; the other children run as usual."""
    real = cli_rebuild.shadow_command

    def one_fails(config: Config, names: Sequence[str], *rest: Any) -> list[str]:
        if projection in names:
            return [sys.executable, "-c", f"import sys; sys.exit({status})"]
        return real(config, names, *rest)

    monkeypatch.setattr(cli_rebuild, "shadow_command", one_fails)


def test_verify_clean_log_exits_0_and_prints_an_anchor(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    code, out, _ = run(capsys, "verify", "--db", db)
    assert code == 0, out
    assert "verify: OK" in out
    for projection in all_projections():
        assert f"{projection.name}: ok" in out
    match = re.search(r"--anchor (\d+):([0-9a-f]{64})", out)
    assert match is not None
    last = _sql(db, "SELECT MAX(position) FROM events")[0][0]
    assert int(match.group(1)) == last
    assert f"head position {last}" in out

    code, out, _ = run(capsys, "verify", "--db", db, "--anchor", match.group(0).split()[-1])
    assert code == 0, out
    forged = f"{match.group(1)}:{'0' * 64}"
    code, out, _ = run(capsys, "verify", "--db", db, "--anchor", forged)
    assert code == 1
    assert f"TAMPERED at position {last}: anchor_mismatch" in out


def test_verify_names_a_corrupted_projection_row_and_rebuild_repairs_it(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    assert run(capsys, "verify", "--db", db)[0] == 0
    projections = projections_path(db)
    key = _sql(projections, "SELECT account_id, spot_id, goal, hour_us FROM goal_stats_hourly")[0]
    _sql(
        projections,
        "UPDATE goal_stats_hourly SET count = count + 5"
        " WHERE account_id = ? AND spot_id = ? AND goal = ? AND hour_us = ?",
        tuple(key),
    )
    (position,) = _sql(projections, "SELECT position FROM postback_index WHERE status = 404")[0]
    _sql(projections, "UPDATE postback_index SET status = 200 WHERE position = ?", (position,))

    code, out, _ = run(capsys, "verify", "--db", db)
    assert code == 1
    assert "goal_stats: DIFFERS" in out
    assert "goal_stats.goal_stats_hourly: 1 changed" in out
    account_id, spot_id, goal, hour_us = key
    assert (
        f"changed row (account_id={account_id}, spot_id={spot_id}, goal={goal!r},"
        f" hour_us={hour_us}): count: live " in out
    )
    assert "postback_index.postback_index: 1 changed" in out
    assert f"changed row (position={position}): status: live 200, replay 404" in out
    assert "verify: FAILED (projections differ: postback_index, goal_stats)" in out

    code, out, err = run(capsys, "rebuild", "--db", db, "goal_stats", "postback_index")
    assert code == 0, err
    assert "rebuilt goal_stats, postback_index" in out
    assert "rebuild [" in err
    assert run(capsys, "verify", "--db", db)[0] == 0


def test_verify_replays_in_children_or_here_alike(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    projections = projections_path(db)
    _sql(projections, "UPDATE goal_stats_hourly SET count = count + 5")
    _sql(projections, "DELETE FROM subscribers WHERE subscriber_id = 1")
    here = run(capsys, "verify", "--db", db, "--jobs", "1")
    assert here[0] == 1
    assert "goal_stats: DIFFERS" in here[1]
    assert "subscribers: DIFFERS" in here[1]
    for jobs in ("2", "5"):
        assert run(capsys, "verify", "--db", db, "--jobs", jobs) == here

    fail_the_child_of(monkeypatch, "subscribers", status=4)
    code, out, err = run(capsys, "verify", "--db", db, "--jobs", "2")
    assert code == 1
    assert "verify could not replay the projections" in err
    assert "exited with status 4" in err
    assert "verify: OK" not in out


def test_a_failed_comparison_stops_the_replay_children(
    db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A group is compared while the others still replay; should that comparison fail,
    the other children are stopped at once (not waited for) and its error raised."""
    asyncio.run(cli_verify.check(Config(db_path=db), None, jobs=1))  # catches them up
    marker = tmp_path / "slow-child"
    real = cli_rebuild.shadow_command

    def one_is_slow(config: Config, names: Sequence[str], *rest: Any) -> list[str]:
        if "subscribers" in names:
            script = f"import time; time.sleep(60); open({str(marker)!r}, 'w').write('done')"
            return [sys.executable, "-c", script]
        return real(config, names, *rest)

    def broken(*args: Any) -> Any:
        raise RuntimeError("the comparison broke")

    monkeypatch.setattr(cli_rebuild, "shadow_command", one_is_slow)
    monkeypatch.setattr(cli_verify, "compare_projections", broken)
    with pytest.raises(RuntimeError, match="the comparison broke"):
        asyncio.run(cli_verify.check(Config(db_path=db), None, jobs=2))
    assert not marker.exists()  # terminated, not run to its end


def test_verify_reports_missing_and_extra_rows(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert run(capsys, "verify", "--db", db)[0] == 0
    projections = projections_path(db)
    (position,) = _sql(projections, "SELECT position FROM postback_index LIMIT 1")[0]
    _sql(projections, "DELETE FROM postback_index WHERE position = ?", (position,))
    (moved,) = _sql(projections, "SELECT MIN(position) FROM goal_facts")[0]
    _sql(projections, "UPDATE goal_facts SET position = ? WHERE position = ?", (10**6, moved))

    code, out, _ = run(capsys, "verify", "--db", db)
    assert code == 1
    assert "postback_index.postback_index: 1 missing" in out
    assert f"missing row (position={position}): in the replay, not in the live table" in out
    assert "goal_stats.goal_facts: 1 missing, 1 extra" in out
    assert f"missing row (position={moved}): in the replay" in out
    assert "extra row (position=1000000): in the live table, not in the replay" in out


def test_verify_names_the_tampered_log_position(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    assert run(capsys, "verify", "--db", db)[0] == 0
    (position,) = _sql(db, "SELECT MIN(position) FROM events WHERE type = 'GoalReached'")[0]
    (data,) = _sql(db, "SELECT data FROM events WHERE position = ?", (position,))[0]
    forged = json.loads(data)
    forged["goal"] = "dep"
    _sql(
        db,
        "UPDATE events SET data = ? WHERE position = ?",
        (json.dumps(forged).encode(), position),
    )
    code, out, _ = run(capsys, "verify", "--db", db)
    assert code == 1
    assert f"log: TAMPERED at position {position}: hash_mismatch" in out
    assert f"log tampered at position {position}" in out
    assert "goal_stats: DIFFERS" in out  # the live rows were built from the original


def _verify_into_a_closed_pipe(monkeypatch: pytest.MonkeyPatch, db: str) -> int:
    """``postback verify`` whose reader has gone (``| head -0``): its exit status."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as stdout:  # buffered, as a pipe is: it breaks at the flush
        monkeypatch.setattr(sys, "stdout", stdout)
        return cli.main(["verify", "--db", db])


def test_verify_keeps_its_verdict_when_its_reader_goes_away(
    monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    # An auditor's `postback verify | head -1` must still fail on a tampered log.
    assert _verify_into_a_closed_pipe(monkeypatch, db) == 0
    (position,) = _sql(db, "SELECT MAX(position) FROM events WHERE type = 'GoalReached'")[0]
    _sql(db, "UPDATE events SET recorded_us = recorded_us + 1 WHERE position = ?", (position,))
    assert _verify_into_a_closed_pipe(monkeypatch, db) == 1


def test_verify_notices_events_deleted_from_the_end(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    assert run(capsys, "verify", "--db", db)[0] == 0
    (last,) = _sql(db, "SELECT MAX(position) FROM events")[0]
    _sql(db, "DELETE FROM events WHERE position = ?", (last,))
    code, out, _ = run(capsys, "verify", "--db", db)
    assert code == 1
    assert "truncated" in out
    assert f"projections are ahead of the log ({last:,} > {last - 1:,})" in out


# -- rebuild ----------------------------------------------------------------------------------


def test_rebuild_all_and_unknown(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = run(capsys, "rebuild", "--db", db)
    assert code == 0
    names = ", ".join(p.name for p in all_projections())
    (last,) = _sql(db, "SELECT MAX(position) FROM events")[0]
    assert f"rebuilt {names} from {last:,} events" in out
    assert f"{last:,}/{last:,} (100%)" in err
    code, out, err = run(capsys, "rebuild", "--db", db, "goal_stats", "nope")
    assert code == 2
    assert "unknown projection nope" in err
    assert run(capsys, "rebuild", "--db", str(Path(db).with_name("absent.db")))[0] == 2


@pytest.mark.parametrize("jobs", ["1", "2", "3"])
def test_rebuild_in_place_or_in_shadows_equals_a_replay(
    capsys: pytest.CaptureFixture[str], db: str, jobs: str
) -> None:
    projections = projections_path(db)
    _sql(projections, "UPDATE goal_stats_hourly SET count = count + 5")
    _sql(projections, "DELETE FROM subscribers")
    code, out, err = run(capsys, "rebuild", "--db", db, "--jobs", jobs)
    assert code == 0, err
    if jobs == "1":
        assert "processes" not in out
    else:
        assert f"({jobs} processes)" in out
    assert run(capsys, "verify", "--db", db)[0] == 0
    assert [p.name for p in Path(db).parent.iterdir() if "rebuild" in p.name] == []


def test_a_failed_shadow_leaves_the_projections_as_they_were(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    projections = projections_path(db)
    before = _sql(projections, "SELECT * FROM subscribers ORDER BY subscriber_id")
    _sql(projections, "UPDATE goal_stats_hourly SET count = count + 5")
    stale = _sql(projections, "SELECT * FROM goal_stats_hourly ORDER BY 1, 2, 3, 4")
    fail_the_child_of(monkeypatch, "subscribers", status=3)
    code, _, err = run(capsys, "rebuild", "--db", db, "--jobs", "2")
    assert code == 1
    (group,) = [
        g for g in plan_shards(all_projections(), 2) if "subscribers" in (p.name for p in g)
    ]
    failed = ", ".join(p.name for p in group)
    assert f"(the child rebuilding {failed} exited with status 3)" in err
    assert "the projections are as they were" in err
    assert _sql(projections, "SELECT * FROM subscribers ORDER BY subscriber_id") == before
    assert _sql(projections, "SELECT * FROM goal_stats_hourly ORDER BY 1, 2, 3, 4") == stale
    assert [p.name for p in Path(db).parent.iterdir() if "rebuild" in p.name] == []


def test_a_signal_before_the_swap_stops_the_children_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
    db: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    projections = projections_path(db)
    _sql(projections, "UPDATE goal_stats_hourly SET count = count + 5")
    stale = _sql(projections, "SELECT * FROM goal_stats_hourly ORDER BY 1, 2, 3, 4")
    pids = tmp_path / "pids"

    def never_done(config: Config, names: Sequence[str], *rest: Any) -> list[str]:
        script = (
            "import os, sys, time\n"
            f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
            "print(1, flush=True)\n"
            "time.sleep(60)\n"
        )
        return [sys.executable, "-c", script]

    def signalled(self: ProgressBar, position: int, total: int) -> None:
        # The first child's first report: as if the operator pressed Ctrl-C now.
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli_rebuild, "shadow_command", never_done)
    monkeypatch.setattr(ProgressBar, "update", signalled)
    code, _, err = run(capsys, "rebuild", "--db", db, "--jobs", "2")
    assert code == 1
    assert "rebuild failed (interrupted); the projections are as they were" in err
    assert _sql(projections, "SELECT * FROM goal_stats_hourly ORDER BY 1, 2, 3, 4") == stale
    assert [p.name for p in Path(db).parent.iterdir() if "rebuild" in p.name] == []
    started = [int(line) for line in pids.read_text().split()]
    assert started
    for pid in started:  # stopped and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_shadow_children_refuse_what_they_are_not_for(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    shadow = str(tmp_path / "shadow.db")
    assert run(capsys, "rebuild", "--db", db, "--until", "3")[0] == 2
    assert run(capsys, "rebuild", "--db", db, f"--shadow={shadow}", "--until=3")[0] == 2
    code, _, err = run(capsys, "rebuild", "--db", db, f"--shadow={db}", "--until=3", "profiles")
    assert code == 2
    assert "a new file" in err
    assert not Path(shadow).exists()


def test_what_the_shadows_did_not_reach_is_applied_after_the_swap(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the log grew while the children worked: they stop 3 events short of the end.
    real = cli_rebuild.shadow_command

    def short(
        config: Config, names: Sequence[str], shadow: str, until: int, batch_size: int
    ) -> list[str]:
        return real(config, names, shadow, until - 3, batch_size)

    monkeypatch.setattr(cli_rebuild, "shadow_command", short)
    (last,) = _sql(db, "SELECT MAX(position) FROM events")[0]
    code, out, err = run(capsys, "rebuild", "--db", db, "--jobs", "2")
    assert code == 0, err
    assert f"from {last:,} events" in out
    assert set(_checkpoints(db).values()) == {last}
    monkeypatch.undo()  # verify's replay children go all the way
    assert run(capsys, "verify", "--db", db)[0] == 0


def test_shadows_go_beside_the_projections_file_even_for_a_bare_file_name(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cli_rebuild.shadow_command
    shadows: list[str] = []

    def recorded(config: Config, names: Sequence[str], shadow: str, *rest: Any) -> list[str]:
        shadows.append(shadow)
        return real(config, names, shadow, *rest)

    monkeypatch.setattr(cli_rebuild, "shadow_command", recorded)
    monkeypatch.chdir(Path(db).parent)
    code, _, err = run(capsys, "rebuild", "--db", Path(db).name, "--jobs", "2")
    assert code == 0, err
    assert len(shadows) == 2
    for shadow in shadows:  # in a temporary directory in the working directory
        assert Path(shadow).resolve().parent.parent == Path(db).parent.resolve()


def test_a_signal_during_the_catch_up_after_the_swap_stops_it(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cli_rebuild.shadow_command
    (last,) = _sql(db, "SELECT MAX(position) FROM events")[0]
    short_by = last // 2  # the events the shadows leave to the catch-up

    def short(
        config: Config, names: Sequence[str], shadow: str, until: int, batch_size: int
    ) -> list[str]:
        return real(config, names, shadow, until - short_by, batch_size)

    real_update = ProgressBar.update

    signalled_at: list[int] = []

    def signalled(self: ProgressBar, position: int, total: int) -> None:
        if position > last - short_by and not signalled_at:  # the catch-up's first batch
            signalled_at.append(position)
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C now
        real_update(self, position, total)

    monkeypatch.setattr(cli_rebuild, "shadow_command", short)
    monkeypatch.setattr(ProgressBar, "update", signalled)
    # One event per batch: the catch-up has many batches to be stopped between.
    code, out, err = run(capsys, "rebuild", "--db", db, "--jobs", "2", "--batch-size", "1")
    assert code == 1
    names = ", ".join(p.name for p in all_projections())
    assert f"rebuild interrupted after the swap: {names} rebuilt up to" in err
    reached = min(_checkpoints(db).values())
    assert last - short_by <= reached < last  # stopped before the end
    said = re.search(r"up to position (\d+) at least; the next catch-up applies the rest", err)
    assert said is not None, err
    # The batch under way when the signal came may have committed after all.
    assert last - short_by <= int(said.group(1)) <= reached
    assert "rebuilt" not in out
    monkeypatch.undo()
    assert run(capsys, "verify", "--db", db)[0] == 0  # which catches them up first


# -- stats ------------------------------------------------------------------------------------


def test_stats_table_and_json(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, _ = run(capsys, "stats", "--db", db, "--group-by", "goal")
    assert code == 0
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:]}
    assert lines["reg"] == ["2", "2", "0.00"]
    assert lines["dep"] == ["1", "1", "100.50"]
    assert lines["redep"] == ["1", "1", "0.25"]

    code, out, _ = run(
        capsys, "stats", "--db", db, "--json", "--tz", "Asia/Kolkata", "--account", "1"
    )
    assert code == 0
    body = json.loads(out)
    assert body["rows"] == [{"count": 5, "unique_subscribers": 2, "sum": "101.75"}]

    code, out, _ = run(capsys, "stats", "--db", db, "--json", "--as-of", "2000-01-01T00:00:00Z")
    assert json.loads(out)["rows"][0]["count"] == 0
    code, out, _ = run(capsys, "stats", "--db", db, "--account", "2")
    assert code == 0
    assert out.splitlines()[-1].split() == ["0", "0", "0.00"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--group-by", "goal,week"], "unknown group_by key 'week'"),
        (["--from", "2026-02-30"], "--from must be a date"),
        (["--from", "2026-03-02", "--to", "2026-03-01"], "is after to"),
        (["--as-of", "yesterday"], "as_of must be an ISO 8601 time"),
    ],
)
def test_stats_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], db: str, flags: list[str], message: str
) -> None:
    code, _, err = run(capsys, "stats", "--db", db, *flags)
    assert code == 2
    assert message in err


# -- export -----------------------------------------------------------------------------------


def test_export_jsonl_and_csv_round_trip(capsys: pytest.CaptureFixture[str], db: str) -> None:
    records = _export(capsys, db)
    (count,) = _sql(db, "SELECT COUNT(*) FROM events")[0]
    assert [r["position"] for r in records] == list(range(1, count + 1))
    first = records[0]
    assert set(first) == {
        "position",
        "stream",
        "version",
        "event_id",
        "type",
        "schema_version",
        "recorded_at",
        "data",
        "metadata",
        "hash",
    }
    assert first["type"] == "AccountCreated"
    assert uuid.UUID(first["event_id"])
    assert len(bytes.fromhex(first["hash"])) == 32

    code, out, _ = run(capsys, "export", "--db", db, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == count
    for row, record in zip(rows, records, strict=True):
        assert int(row["position"]) == record["position"]
        assert json.loads(row["data"]) == record["data"]
        assert json.loads(row["metadata"]) == record["metadata"]
        assert row["hash"] == record["hash"]
        assert row["recorded_at"] == record["recorded_at"]


def test_export_after_and_until(capsys: pytest.CaptureFixture[str], db: str) -> None:
    records = _export(capsys, db)
    after = _export(capsys, db, "--after", "5")
    assert after == records[5:]
    assert _export(capsys, db, "--after", str(len(records))) == []
    middle = records[len(records) // 2]["recorded_at"]
    until = _export(capsys, db, "--until", middle)
    moment = datetime.fromisoformat(middle)
    assert until == [r for r in records if datetime.fromisoformat(r["recorded_at"]) <= moment]
    assert until
    assert _export(capsys, db, "--until", "2000-01-01T00:00:00+00:00") == []
    code, _, err = run(capsys, "export", "--db", db, "--until", "soon")
    assert code == 2
    assert "ISO 8601" in err


# -- database options -------------------------------------------------------------------------


def test_db_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTBACK_DB", db)
    code, out, _ = run(capsys, "verify")
    assert code == 0, out


def test_serve_no_projections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Config] = []

    async def fake_serve(config: Config) -> None:
        seen.append(config)

    monkeypatch.setattr(cli, "serve", fake_serve)
    assert cli.main(["serve", "--db", str(tmp_path / "a.db"), "--no-projections"]) == 0
    assert cli.main(["serve", "--db", str(tmp_path / "a.db")]) == 0
    assert [config.run_projections for config in seen] == [False, True]


# -- project: a process of its own, killed mid-batch ------------------------------------------


async def _append_many(db: str, subscribers: int, per_subscriber: int, first_id: int = 1) -> int:
    """``subscribers`` new subscribers from ``first_id`` on, each with ``per_subscriber``
    events (``SubscriberCreated``, then goals with their postback metadata)."""
    store = await SQLiteEventStore.open(db, durability="normal", poll_interval=None)
    end = first_id + subscribers
    try:
        for first in range(first_id, end, 500):
            ids = range(first, min(first + 500, end))
            created = [
                NewEvent(
                    "SubscriberCreated",
                    {
                        "subscriber_id": i,
                        "account_id": 1 + i % 2,
                        "spot_id": 1 + i % 3,
                        "spot_token": f"spot-{1 + i % 3}",
                        "user_id": str(i),
                        "clickid": f"C{i}",
                        "fbclid": None,
                        "fbp": None,
                    },
                )
                for i in ids
            ]
            await store.append("subscribers", created)
            await asyncio.gather(
                *(store.append(f"subscriber-{i}", _activity(i, per_subscriber - 1)) for i in ids)
            )
        return await store.last_position()
    finally:
        await store.close()


def _activity(subscriber_id: int, count: int) -> list[NewEvent]:
    goals = ("reg", "dep", "redep", "level10")
    events = []
    for n in range(count):
        goal = goals[min(n, len(goals) - 1)] if n < 3 else goals[2 + n % 2]
        meta = {
            "postback": {
                "request_id": str(uuid.uuid4()),
                "endpoint": "postback",
                "method": "GET",
                "path": "/postback/",
                "query": f"clickid=C{subscriber_id}&goal={goal}",
                "body": "",
                "ip": "203.0.113.7",
                "received_at": "2026-11-24T12:00:00.123456+00:00",
                "clickid": f"C{subscriber_id}",
                "user_id": None,
                "spot": f"spot-{1 + subscriber_id % 3}",
                "goal": goal,
                "txid": None,
                "status": 200,
                "response": {"success": True},
            }
        }
        data = {
            "subscriber_id": subscriber_id,
            "account_id": 1 + subscriber_id % 2,
            "spot_id": 1 + subscriber_id % 3,
            "goal": goal,
            "standard": goal != "level10",
            "amount": None if goal in ("reg", "level10") else f"{n + 1}.{subscriber_id % 100:02d}",
            "txid": None,
        }
        events.append(NewEvent("GoalReached", data, meta))
    return events


class Project:
    """``postback project OPTIONS`` in a subprocess; its stderr lines arrive in a queue."""

    def __init__(self, *options: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "postback", "project", *options],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first line (from now on) matching ``pattern``; fails at the process's end."""
        while True:
            line = self.lines.get(timeout=LINE_TIMEOUT)
            if line is None:
                raise AssertionError(f"project ended; it said: {self.seen}")
            self.seen.append(line)
            if (match := re.search(pattern, line)) is not None:
                return match

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=LINE_TIMEOUT)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def big_db(tmp_path: Path) -> tuple[str, int]:
    path = str(tmp_path / "big.db")
    return path, asyncio.run(_append_many(path, subscribers=5_000, per_subscriber=10))


def _checkpoints(db: str) -> dict[str, int]:
    return dict(_sql(projections_path(db), "SELECT name, position FROM projection_checkpoints"))


@pytest.mark.slow
def test_project_killed_mid_batch_resumes_to_a_fresh_replay(
    capsys: pytest.CaptureFixture[str], big_db: tuple[str, int]
) -> None:
    db, last = big_db
    assert last == 50_000
    first = Project("--db", db, "--batch-size", "1000")
    try:
        match = first.wait_for(r"^project \[[#-]+\] ([\d,]+)/")
        assert int(match.group(1).replace(",", "")) > 0
        first.process.send_signal(signal.SIGKILL)
    finally:
        first.close()
    assert first.process.returncode == -signal.SIGKILL
    reached = _checkpoints(db)
    assert set(reached) == {p.name for p in all_projections()}
    assert 0 < min(reached.values()) < last  # killed on the way, not at the end

    second = Project("--db", db)
    try:
        second.wait_for(rf"caught up at position {last:,}")
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=LINE_TIMEOUT) == 0
        second.wait_for(rf"stopped at position {last:,}")
    finally:
        second.close()
    assert set(_checkpoints(db).values()) == {last}

    code, out, _ = run(capsys, "verify", "--db", db)
    assert code == 0, out
    assert f"fresh replay of positions 1..{last:,}" in out


def test_project_follows_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "follow.db")
    first = asyncio.run(_append_many(db, subscribers=20, per_subscriber=3))
    process = Project("--db", db)
    try:
        process.wait_for(rf"caught up at position {first:,}")
        more = asyncio.run(_append_many(db, subscribers=10, per_subscriber=2, first_id=21))
        assert more > first
        process.wait_for(r"caught up at position (\d[\d,]*)")
        while (reached := min(_checkpoints(db).values())) < more:
            process.wait_for(r"caught up at position")
        assert reached == more
        process.process.send_signal(signal.SIGINT)
        assert process.process.wait(timeout=LINE_TIMEOUT) == 0
    finally:
        process.close()
    assert run(capsys, "verify", "--db", db)[0] == 0
