"""An operator's mistakes and a broken output give the ``postback`` command one clear line
and a telling exit status (2: usage, or a log that cannot be opened; 1: failed), never a
traceback; found by a black-box audit of the CLI."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from postback import cli
from postback.config import Config
from tests.postback.test_cli_analyst import build_log, run

HUGE = "99999999999999999999999"


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "log.db")
    asyncio.run(build_log(Config(db_path=path)))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--after", HUGE],
        ["stats", "--account", HUGE],
        ["stats", "--spot", HUGE],
        ["rebuild", "--batch-size", HUGE],
        ["project", "--batch-size", HUGE],
        ["serve", "--port", "70000"],
        ["serve", "--port", "-5"],
        ["demo", "--port", "abc"],
        ["verify", "--anchor", "0:" + "ab" * 32],
        ["verify", "--anchor", "5:00"],
        ["verify", "--anchor", "5:" + "ab" * 33],
    ],
)
def test_numbers_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], db: str, argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--db", db])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["70000", "-1", "abc"])
def test_a_bad_postback_port_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: str, value: str
) -> None:
    monkeypatch.setenv("POSTBACK_PORT", value)
    code, _, err = run(capsys, "serve", "--db", db)
    assert code == 2
    assert f"POSTBACK_PORT={value!r} is not valid: a port is a number from 0 to 65535" in err


def test_a_taken_port_is_one_line(capsys: pytest.CaptureFixture[str], db: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(
            capsys, "serve", "--db", db, "--port", str(port), "--projector", "inline"
        )
    assert code == 2
    assert f"postback: cannot listen on 127.0.0.1 port {port}: " in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["export", "stats", "verify", "account"])
@pytest.mark.parametrize("kind", ["directory", "not a database"])
def test_a_log_that_cannot_be_opened_is_named_and_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, kind: str
) -> None:
    path = tmp_path / "log.db"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"not an SQLite database at all\n" * 100)
    argv = ["account", "create", "acme"] if command == "account" else [command]
    code, _, err = run(capsys, *argv, "--db", str(path))
    assert code == 2, err
    assert f"postback: cannot open the log at {path}: SQLite: " in err


@pytest.mark.parametrize("command", ["export", "stats", "verify"])
def test_an_empty_file_is_no_log_and_stays_empty(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    code, _, err = run(capsys, command, "--db", str(path))
    assert code == 2
    assert f"no log at {path}: the file is empty" in err
    assert path.stat().st_size == 0


def test_export_with_a_bad_until_names_the_option(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    code, _, err = run(capsys, "export", "--until", "yesterday", "--db", db)
    assert code == 2
    assert "--until must be an ISO 8601 time, got 'yesterday'" in err


def test_a_broken_projections_file_is_named(capsys: pytest.CaptureFixture[str], db: str) -> None:
    projections = Path(db).with_suffix(".projections.db")
    projections.write_bytes(b"not an SQLite database at all\n" * 100)
    code, _, err = run(capsys, "stats", "--db", db)
    assert code == 1
    assert f"cannot open the projections file {projections}" in err
    assert "built again from the log" in err


class _Full(io.RawIOBase):
    """An output on a full disk."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_to_a_full_disk_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: str, fmt: str
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(_Full(), 1)))
    monkeypatch.setattr(sys, "stderr", err)
    code = cli.main(["export", "--format", fmt, "--db", db])
    assert code == 1
    assert "postback: cannot write the output: No space left on device" in err.getvalue()


def test_export_with_stdout_closed_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    code = cli.main(["export", "--db", db])
    assert code == 1
    assert "cannot write the output: standard output is closed" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_writes_utf8_whatever_the_locale(
    monkeypatch: pytest.MonkeyPatch, db: str, fmt: str
) -> None:
    raw = io.BytesIO()
    latin = io.TextIOWrapper(raw, encoding="latin-1")
    monkeypatch.setattr(sys, "stdout", latin)
    asyncio.run(_with_unicode(db))
    assert cli.main(["export", "--format", fmt, "--db", db]) == 0
    latin.flush()
    assert "Überweisung ✓" in raw.getvalue().decode("utf-8")


async def _with_unicode(db: str) -> None:
    from eventstore import NewEvent
    from eventstore.sqlite import SQLiteEventStore

    store = await SQLiteEventStore.open(db, poll_interval=None)
    try:
        await store.append("notes", [NewEvent("Noted", {"text": "Überweisung ✓"})])
    finally:
        await store.close()


def test_account_create_with_stdout_closed_keeps_the_key_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stdout", None)  # what `>&-` gives Python
    code = cli.main(["account", "create", "acme", "--db", str(tmp_path / "a.db")])
    assert code == 1
    assert "account 1 created, but its API key could not be written" in capsys.readouterr().err


def test_stats_into_a_gone_reader_is_quiet_and_0(monkeypatch: pytest.MonkeyPatch, db: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as stdout:  # buffered: the pipe breaks at the flush
        monkeypatch.setattr(sys, "stdout", stdout)
        assert cli.main(["stats", "--db", db]) == 0


def test_account_create_into_a_gone_reader_keeps_the_key_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        code = cli.main(["account", "create", "acme", "--db", str(tmp_path / "a.db")])
    assert code == 1
    err = capsys.readouterr().err
    assert "account 1 created, but its API key could not be written" in err
    assert "api key: " in err
