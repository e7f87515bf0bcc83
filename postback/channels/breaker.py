"""The circuit breaker: a target (a pixel, a bot, a webhook URL) that keeps failing rests.

Per target ``(account, channel, target)``: ``threshold`` transient failures in a row
(timeouts, connection errors, 408, 429, 5xx) pause it for ``cooldown`` seconds. When the
pause ends, one delivery goes through alone (a probe): an answer that is not a transient
failure resumes the target, a transient failure pauses it again for twice as long (up to
:data:`MAX_COOLDOWN_FACTOR` times ``cooldown``). Any non-transient answer (2xx, or a 4xx:
the target is up, the request was refused) resets the count. The state lives in memory;
the outbox records each pause and resume as events and starts from the projection's
``delivery_circuits``, so a restart neither forgets a pause nor hammers a paused target.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Final

Key = tuple[int, str, str]
"""``(account_id, channel, target)``."""

MAX_COOLDOWN_FACTOR: Final = 32


class Change(Enum):
    PAUSED = "paused"
    RESUMED = "resumed"


@dataclass(slots=True)
class _State:
    failures: int = 0
    paused_until: datetime | None = None
    pauses: int = 0


class Breaker:
    def __init__(self, threshold: int, cooldown: float) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self._threshold = threshold
        self._cooldown = cooldown
        self._states: dict[Key, _State] = {}

    def restore(self, key: Key, failures: int, paused_until: datetime | None) -> None:
        """Start from a recorded state (a restart)."""
        if failures > 0 or paused_until is not None:
            self._states[key] = _State(failures, paused_until, 1 if paused_until else 0)

    def allows(self, key: Key, now: datetime, in_flight: int) -> bool:
        """May a delivery to ``key`` start now, with ``in_flight`` others to it under way?"""
        state = self._states.get(key)
        if state is None or state.paused_until is None:
            return True
        return now >= state.paused_until and in_flight == 0

    def paused_until(self, key: Key) -> datetime | None:
        state = self._states.get(key)
        return None if state is None else state.paused_until

    def failures(self, key: Key) -> int:
        state = self._states.get(key)
        return 0 if state is None else state.failures

    def record(self, key: Key, *, transient: bool, now: datetime) -> Change | None:
        """Count one attempt's outcome; say whether the target is now paused or resumed."""
        state = self._states.get(key)
        if not transient:
            if state is None:
                return None
            del self._states[key]
            return Change.RESUMED if state.paused_until is not None else None
        if state is None:
            state = self._states[key] = _State()
        state.failures += 1
        if state.paused_until is not None:
            if now < state.paused_until:
                return None  # sent before the pause began; the pause stands
            state.pauses += 1  # the probe failed
        elif state.failures >= self._threshold:
            state.pauses = 1
        else:
            return None
        factor = min(2 ** (state.pauses - 1), MAX_COOLDOWN_FACTOR)
        state.paused_until = now + timedelta(seconds=self._cooldown * factor)
        return Change.PAUSED

    def snapshot(self) -> dict[Key, tuple[int, datetime | None]]:
        """Every target with failures or a pause: ``(failures, paused until)``."""
        return {key: (s.failures, s.paused_until) for key, s in self._states.items()}

    def next_change(self, now: datetime) -> datetime | None:
        """When the next pause ends (None if no target is paused past ``now``)."""
        ends = [
            s.paused_until
            for s in self._states.values()
            if s.paused_until is not None and s.paused_until > now
        ]
        return min(ends, default=None)

    def paused_by_channel(self, now: datetime) -> Counter[str]:
        """How many targets of each channel are paused at ``now``."""
        return Counter(
            key[1]
            for key, s in self._states.items()
            if s.paused_until is not None and s.paused_until > now
        )
