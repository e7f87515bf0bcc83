"""The outbox's configuration, its switches in the app, and its retry arithmetic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from postback.channels.breaker import Breaker, Change
from postback.channels.events import backoff
from postback.channels.http import retry_after
from postback.config import Config, ConfigError
from postback.outbox import OUTBOX
from postback.postbacks import RUNNER
from tests.postback.outbox_support import (
    MakeService,
    make_service_fixture,  # noqa: F401
    receiver_fixture,  # noqa: F401
)


def test_environment_variables() -> None:
    config = Config.from_env(
        {
            "POSTBACK_OUTBOX": "off",
            "POSTBACK_OUTBOX_CONCURRENCY": "4",
            "POSTBACK_OUTBOX_MAX_ATTEMPTS": "3",
            "POSTBACK_OUTBOX_BACKOFF_BASE": "0.5",
            "POSTBACK_OUTBOX_BACKOFF_MAX": "60",
            "POSTBACK_OUTBOX_TIMEOUT": "2.5",
            "POSTBACK_OUTBOX_BREAKER_FAILURES": "7",
            "POSTBACK_OUTBOX_BREAKER_COOLDOWN": "0",
        }
    )
    assert (config.outbox, config.outbox_concurrency, config.outbox_max_attempts) == (
        False,
        4,
        3,
    )
    assert (config.outbox_backoff_base, config.outbox_backoff_max) == (0.5, 60.0)
    assert (config.outbox_timeout, config.outbox_breaker_failures) == (2.5, 7)
    assert config.outbox_breaker_cooldown == 0.0
    assert Config.from_env({"POSTBACK_OUTBOX": "ON"}).outbox is True
    assert Config.from_env({}).outbox is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POSTBACK_OUTBOX", "maybe"),
        ("POSTBACK_OUTBOX_CONCURRENCY", "0"),
        ("POSTBACK_OUTBOX_CONCURRENCY", "x"),
        ("POSTBACK_OUTBOX_MAX_ATTEMPTS", "-1"),
        ("POSTBACK_OUTBOX_BACKOFF_BASE", "-1"),
        ("POSTBACK_OUTBOX_BACKOFF_MAX", "nan"),
        ("POSTBACK_OUTBOX_TIMEOUT", "0"),
        ("POSTBACK_OUTBOX_BREAKER_COOLDOWN", "inf"),
    ],
)
def test_bad_values_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError):
        Config.from_env({variable: value})


async def test_no_outbox_without_projections_or_when_switched_off(
    make_service: MakeService,
) -> None:
    for switches in ({"run_projections": False}, {"outbox": False}):
        svc = await make_service(**switches)
        assert OUTBOX not in svc.app
        assert RUNNER in svc.app
    svc = await make_service()
    assert OUTBOX in svc.app


def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 40):
        ceiling = min(300.0, 2.0 * 2 ** (attempt - 1))
        delays = [backoff(attempt, 2.0, 300.0, rng) for _ in range(50)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the whole range, not fixed
    assert backoff(1000, 1.0, 10.0, rng) <= 10.0
    assert backoff(3, 0.0, 10.0, rng) == 0.0


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert retry_after("120", now) == 120.0
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0.0
    assert retry_after("soon", now) is None
    assert retry_after("", now) is None
    assert retry_after(None, now) is None


def test_breaker_counts_transient_failures_in_a_row() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    breaker = Breaker(threshold=2, cooldown=10.0)
    key = (1, "webhook", "https://x")
    assert breaker.record(key, transient=True, now=now) is None
    assert breaker.record(key, transient=False, now=now) is None  # an answer: the row ends
    assert breaker.record(key, transient=True, now=now) is None
    assert breaker.record(key, transient=True, now=now) is Change.PAUSED
    assert not breaker.allows(key, now, 0)
    later = now + timedelta(seconds=10)
    assert breaker.next_change(now) == later
    assert breaker.allows(key, later, 0)
    assert not breaker.allows(key, later, 1)  # one probe at a time
    assert breaker.record(key, transient=True, now=now) is None  # sent before the pause
    assert breaker.record(key, transient=False, now=later) is Change.RESUMED
    assert breaker.allows(key, later, 5)
