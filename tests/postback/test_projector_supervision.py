"""The supervision of serve's projections process (:class:`postback.projector.ChildProjector`)
with stand-in children: what it reads from them, and what it does when one cannot start,
hangs, or must stop."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator

import pytest

import postback.projector as projector
from postback.config import Config
from projections.database import SQLiteProjectionDatabase

WAIT = 20.0


class _Told(SQLiteProjectionDatabase):
    """Counts the child's words (``note_change``) and lets a test wait for the next."""

    def __init__(self) -> None:
        super().__init__("unused.db")
        self.told = asyncio.Event()

    def note_change(self) -> None:
        super().note_change()
        self.told.set()


class _Errors(logging.Handler):
    """Sets ``seen`` once ``count`` error records containing ``text`` were logged."""

    def __init__(self, text: str, count: int) -> None:
        super().__init__(logging.ERROR)
        self.text, self.count, self.seen = text, count, asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            if len(self.messages) >= self.count:
                self.seen.set()


Watch = Callable[[str, int], _Errors]


@pytest.fixture
def errors() -> Iterator[Watch]:
    handlers: list[_Errors] = []

    def watch(text: str, count: int) -> _Errors:
        handler = _Errors(text, count)
        logging.getLogger("postback.projector").addHandler(handler)
        handlers.append(handler)
        return handler

    yield watch
    for handler in handlers:
        logging.getLogger("postback.projector").removeHandler(handler)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_the_childs_lines_wake_the_follower_and_tell_who_leads() -> None:
    database = _Told()
    relayed: list[object] = []
    # Sends its outbox's metrics, says where it is and that it leads, then waits for its
    # stdin to close (as serve's child does), answering each "the log grew" it is told.
    child = projector.ChildProjector(
        Config(),
        database,
        _python(
            "import sys\n"
            'print(\'M [["postback_outbox_in_flight", "h", "gauge", []]]\', flush=True)\n'
            "print('5 1', flush=True)\n"
            "for line in sys.stdin:\n"
            "    print('6 0', flush=True)\n"
        ),
        on_metrics=relayed.append,
    )
    task = asyncio.create_task(child.run())
    async with asyncio.timeout(WAIT):
        await database.told.wait()
        assert child.leads
        assert database.changes == 1
        assert relayed == [[["postback_outbox_in_flight", "h", "gauge", []]]]
        database.told.clear()
        child.log_grew()
        await database.told.wait()
        assert not child.leads
        assert database.changes == 2
        await child.close()
        await task
    assert child.pid is None
    assert child.starts == 1


async def test_a_child_that_cannot_start_is_tried_again_and_close_stops_that(
    monkeypatch: pytest.MonkeyPatch, errors: Watch
) -> None:
    monkeypatch.setattr(projector, "_RESTART_FIRST", 0.0)
    failures = errors("could not start it", 3)
    child = projector.ChildProjector(Config(), _Told(), ["/nonexistent/python3"])
    task = asyncio.create_task(child.run())
    async with asyncio.timeout(WAIT):
        await failures.seen.wait()
        await child.close()
        await task
    assert "FileNotFoundError" in failures.messages[0]
    assert child.starts == 0


async def test_a_silent_child_is_taken_for_hung_killed_and_started_again(
    monkeypatch: pytest.MonkeyPatch, errors: Watch
) -> None:
    monkeypatch.setattr(projector, "_SILENCE_LIMIT", 0.3)
    monkeypatch.setattr(projector, "_RESTART_FIRST", 0.0)
    hung = errors("said nothing", 2)
    database = _Told()
    child = projector.ChildProjector(
        Config(), database, _python("import time; print('1 1', flush=True); time.sleep(600)")
    )
    task = asyncio.create_task(child.run())
    async with asyncio.timeout(WAIT):
        await hung.seen.wait()
        await child.close()
        await task
    assert child.starts >= 2
    assert child.pid is None
