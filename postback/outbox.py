"""The outbox: sends the pending deliveries of the ``deliveries`` projection (docs/outbox.md).

One :class:`Outbox` per service process, sending only while ``is_leader()`` (several
instances on one PostgreSQL log have one leading projection runner). On taking the lead
it first waits for the projections to reach the log's end: a delivery whose outcome is
already in the log is never read as pending. Then, round after round, it reads the
deliveries due now (``runner.query``), starts at most ``outbox_concurrency`` sends (never
two of one delivery), and sleeps until something can change: a send finished, the
projections applied new events, the next retry or the end of a pause fell due (no
polling). A send's outcome is appended to the delivery's stream with deterministic event
ids and the stream version the projection last saw; the delivery leaves the in-flight set
only once the projections have applied it, and a round whose read predates that skips it.

Exactly once, as the receiver sees it: an outcome is recorded after the receiver's
answer, so a crash between the two means one more send after the restart, with the same
event id (Facebook's ``event_id``, the webhook's ``X-Postback-Event-Id``) for the receiver
to drop; a Telegram message may arrive twice in that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

import aiohttp
from aiohttp import web

from eventstore import ANY, ConcurrencyError, DuplicateEventError, NewEvent, StoreUnavailableError
from eventstore.base import EventStore, micros_from_utc, utc_from_micros
from postback.channels import FAILED, Channel, Outcome
from postback.channels import events as outcomes
from postback.channels.breaker import Breaker, Change, Key
from postback.channels.http import redact
from postback.channels.setup import channels_for, session
from postback.config import Config
from postback.keys import CONFIG, METRICS, STORE
from postback.metrics import Metrics
from postback.tasks import reap
from projections import delivery_payloads as p
from projections.deliveries_query import PendingDelivery, circuit_states, due_work
from projections.runner import ProjectionRunner, ProjectionStoppedError

log = logging.getLogger("postback.outbox")

FACEBOOK_MAX_AGE: Final = timedelta(days=7)
"""Facebook refuses events older than this; such deliveries are recorded as expired."""
_MAX_SLEEP: Final = 60.0
_LEADER_POLL: Final = 1.0
_STORE_RETRY_MAX: Final = 5.0
_HOLD: Final = timedelta(seconds=60)
"""How long a delivery whose send crashed unexpectedly waits before it is tried again."""


class Clock:
    """The outbox's time (UTC). Tests pass one they move by hand."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class OutboxStoppedError(RuntimeError):
    """:meth:`Outbox.wait_idle` cannot finish: the outbox has stopped."""


class Outbox:
    """See the module docstring. ``run()`` it as a task; ``close()`` stops it gracefully."""

    def __init__(
        self,
        store: EventStore,
        runner: ProjectionRunner,
        config: Config,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        is_leader: Callable[[], bool] | None = None,
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self._store = store
        self._runner = runner
        self._config = config
        self._metrics = metrics if metrics is not None else Metrics()
        self._clock = clock if clock is not None else Clock()
        self._rng = rng if rng is not None else random.Random()
        self._is_leader = is_leader if is_leader is not None else (lambda: True)
        self._channels = dict(channels) if channels is not None else channels_for(config)
        self._breaker = self._new_breaker()
        self._leading = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._per_target: dict[Key, int] = {}
        self._recent: dict[str, int] = {}  # delivery -> position its last outcome is visible at
        self._held: dict[str, datetime] = {}
        # delivery -> log position the stored projection must reach before it may be sent:
        # its stream was ahead of its row (a rebuild under way, or an append conflict)
        self._behind: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._round = asyncio.Event()
        self._rounds = 0  # rounds started
        self._idle: tuple[int, int] | None = None  # (round, position seen) of an idle round
        self._stopping = self._running = self._finished = False
        self._http: aiohttp.ClientSession | None = None
        self._webhook_http: aiohttp.ClientSession | None = None  # resolves public names only

    def _new_breaker(self) -> Breaker:
        config = self._config
        return Breaker(config.outbox_breaker_failures, config.outbox_breaker_cooldown)

    @property
    def breaker(self) -> Breaker:
        """The circuit breaker as it stands (for tests and diagnostics)."""
        return self._breaker

    # -- control ---------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due work now (e.g. after a test moved its clock)."""
        self._wake.set()

    async def close(self, grace: float | None = None) -> None:
        """Stop starting sends; let those under way finish (at most ``grace`` seconds,
        by default the request timeout and a little), then return."""
        self._stopping = True
        self._wake.set()
        limit = self._config.outbox_timeout + 5.0 if grace is None else grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while self._running:
                    await self._round.wait()

    async def wait_idle(self) -> None:
        """Return once a round that started after this call, with the projections past the
        log's end as of this call, found nothing due and nothing in flight. Raises
        :class:`OutboxStoppedError` if the outbox stops first."""
        head = await self._store.last_position()
        after = self._rounds
        self._wake.set()
        while self._idle is None or self._idle[0] <= after or self._idle[1] < head:
            if self._finished or self._stopping:
                raise OutboxStoppedError("the outbox has stopped")
            await self._round.wait()

    def _end_round(self, idle_at: int | None) -> None:
        self._idle = None if idle_at is None else (self._rounds, idle_at)
        self._round.set()
        self._round = asyncio.Event()

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Send until :meth:`close` or cancellation (which cancels the sends under way:
        their deliveries stay pending and are sent again by the next run)."""
        if self._running:
            raise RuntimeError("this outbox is running already")
        self._running = True
        delay = 0.1
        try:
            async with (
                session(self._config) as http,
                session(self._config, webhook=True) as webhook_http,
            ):
                self._http, self._webhook_http = http, webhook_http
                try:
                    while not self._stopping:
                        try:
                            await self._step()
                            delay = 0.1
                        except StoreUnavailableError as exc:
                            log.warning("outbox: %s; retrying in %.1f s", exc, delay)
                            await self._sleep(None, delay)
                            delay = min(delay * 2, _STORE_RETRY_MAX)
                except asyncio.CancelledError:
                    for task in self._tasks.values():
                        task.cancel()
                    raise
                finally:
                    if self._tasks:
                        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        finally:
            self._running, self._finished = False, True
            self._http = self._webhook_http = None
            self._end_round(None)

    async def _step(self) -> None:
        self._rounds += 1
        if not self._is_leader():
            self._leading = False
            self._end_round(None)
            await self._sleep(None, _LEADER_POLL)
        elif not self._leading:
            await self._take_over()
            self._leading = True
        elif len(self._tasks) >= self._config.outbox_concurrency:
            self._end_round(None)
            await self._sleep(None, None)  # only a finished send makes room
        else:
            await self._round_trip()

    async def _take_over(self) -> None:
        """Wait for the projections to reach the log's end (every outcome recorded so far
        applied), then start from the recorded pauses."""
        head = await self._store.last_position()
        while self._runner.position < head and not self._stopping:
            await self._sleep(self._runner.position, None)
        self._breaker = self._new_breaker()
        for account_id, channel, target, failures, until in await self._runner.query(
            circuit_states
        ):
            paused = None if until is None else utc_from_micros(until)
            self._breaker.restore((account_id, channel, target), failures, paused)
        self._gauge_paused()
        self._end_round(None)

    async def _round_trip(self) -> None:
        seen = self._runner.position
        now = self._clock.now()
        free = self._config.outbox_concurrency - len(self._tasks)
        applied, rows, next_us = await self._runner.query(
            partial(due_work, now_us=micros_from_utc(now), limit=len(self._tasks) + 4 * free)
        )
        self._recent = {d: at for d, at in self._recent.items() if at > seen}
        self._behind = {d: at for d, at in self._behind.items() if at > applied}
        self._held = {d: until for d, until in self._held.items() if until > now}
        stale = False
        for row in rows:
            if free <= 0:
                break
            key = (row.account_id, row.channel, row.target)
            if row.delivery_id in self._recent:  # read before its outcome was applied
                stale = True
            elif not (
                row.delivery_id in self._tasks
                or row.delivery_id in self._held
                or row.delivery_id in self._behind
                or not self._breaker.allows(key, now, self._per_target.get(key, 0))
            ):
                self._start(row, key)
                free -= 1
        self._end_round(None if self._tasks or stale else seen)
        times = [self._breaker.next_change(now), *self._held.values()]
        if next_us is not None:
            times.append(utc_from_micros(next_us))
        due = min((t for t in times if t is not None), default=None)
        await self._sleep(seen, None if due is None else (due - now).total_seconds())

    async def _sleep(self, seen: int | None, seconds: float | None) -> None:
        """Until woken, the projections pass ``seen``, or ``seconds`` (at most a minute)."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if seen is not None:
            waiters.append(asyncio.ensure_future(self._runner.wait_until(seen + 1, urgent=False)))
        limit = _MAX_SLEEP if seconds is None else min(max(seconds, 0.0), _MAX_SLEEP)
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        self._wake.clear()
        for waiter in done:
            if not waiter.cancelled() and (exc := waiter.exception()) is not None:
                raise exc  # the runner stopped or failed: so does the outbox

    # -- one delivery ----------------------------------------------------------------

    def _start(self, row: PendingDelivery, key: Key) -> None:
        self._per_target[key] = self._per_target.get(key, 0) + 1
        self._tasks[row.delivery_id] = asyncio.get_running_loop().create_task(
            self._deliver(row, key)
        )
        self._metrics.outbox_in_flight.set(len(self._tasks))

    async def _deliver(self, row: PendingDelivery, key: Key) -> None:
        try:
            await self._attempt(row, key)
        except (asyncio.CancelledError, ProjectionStoppedError):
            raise
        except Exception:  # logged without the token, which a traceback may hold
            trace = redact(traceback.format_exc(), row.secret)
            log.error("outbox: delivery %s failed unexpectedly; retrying later\n%s", row, trace)
            self._held[row.delivery_id] = self._clock.now() + _HOLD
        finally:
            del self._tasks[row.delivery_id]
            if self._per_target[key] > 1:
                self._per_target[key] -= 1
            else:
                del self._per_target[key]
            self._metrics.outbox_in_flight.set(len(self._tasks))
            self._wake.set()

    async def _stale(self, row: PendingDelivery) -> bool:
        """Is ``row`` older than its stream (the projection being rebuilt, say, so a
        delivery done long ago reads as pending)? Then hold it until the stored projection
        has applied the log as it is now: sending it could only be a duplicate."""
        version = await self._store.stream_version(p.delivery_stream(row.delivery_id))
        if version <= row.version:
            return False
        head = await self._store.last_position()
        self._behind[row.delivery_id] = head
        log.warning(
            "outbox: %s is at version %d in the log but %d in the projection (being rebuilt?);"
            " not sent before the projection reaches position %d",
            row,
            version,
            row.version,
            head,
        )
        return True

    async def _attempt(self, row: PendingDelivery, key: Key) -> None:
        if await self._stale(row):
            return
        started = self._clock.now()
        if (
            row.channel == p.FACEBOOK
            and started - utc_from_micros(row.source_us) > FACEBOOK_MAX_AGE
        ):
            reason = "older than 7 days: Facebook refuses such events"
            await self._record(row, [outcomes.final(p.DELIVERY_EXPIRED, row, reason=reason)])
            self._metrics.outbox_completed.labels(row.channel, p.EXPIRED).inc()
            return
        channel = self._channels.get(row.channel)
        if channel is None:
            outcome = Outcome(FAILED, error=f"no channel {row.channel!r}")
        else:
            http = self._webhook_http if row.channel == p.WEBHOOK else self._http
            assert http is not None
            clock = time.perf_counter()
            outcome = await channel.send(http, row, row.attempts + 1, started)
            elapsed = time.perf_counter() - clock
            self._metrics.outbox_attempt_seconds.labels(row.channel).observe(elapsed)
        finished = self._clock.now()
        config = self._config
        events = outcomes.outcome_events(
            row,
            outcome,
            started=started,
            finished=finished,
            max_attempts=config.outbox_max_attempts,
            delay=outcomes.backoff(
                row.attempts + 1, config.outbox_backoff_base, config.outbox_backoff_max, self._rng
            ),
        )
        change = self._breaker.record(key, transient=outcome.transient, now=finished)
        await self._record(row, events)
        self._metrics.outbox_attempts.labels(row.channel, outcome.verdict).inc()
        if len(events) > 1:
            status = p.SUCCEEDED if events[1].type == p.DELIVERY_SUCCEEDED else p.FAILED
            self._metrics.outbox_completed.labels(row.channel, status).inc()
        if change is not None:
            await self._circuit_event(key, change, outcome)

    async def _record(self, row: PendingDelivery, events: list[NewEvent]) -> None:
        """Append ``events`` (retrying while the store is unavailable: the ids make a retry
        idempotent), then wait until the projections have applied them."""
        delay = 0.05
        while True:
            try:
                result = await self._store.append(
                    p.delivery_stream(row.delivery_id), events, expected_version=row.version
                )
                position = result.last_position
                break
            except (ConcurrencyError, DuplicateEventError) as exc:
                # Recorded meanwhile by another sender, or the projection is behind the
                # stream: either way, no send before the projection has caught up.
                position = await self._store.last_position()
                self._behind[row.delivery_id] = position
                log.warning("outbox: %s: %s; held until position %d", row, exc, position)
                break
            except StoreUnavailableError as exc:
                if self._stopping:
                    raise
                log.warning("outbox: recording %s: %s; retrying in %.2f s", row, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _STORE_RETRY_MAX)
        self._recent[row.delivery_id] = position
        await self._runner.wait_until(position)

    async def _circuit_event(self, key: Key, change: Change, outcome: Outcome) -> None:
        account_id, channel, target = key
        data: dict[str, Any] = {"account_id": account_id, "channel": channel, "target": target}
        if change is Change.PAUSED:
            until = self._breaker.paused_until(key)
            assert until is not None
            failures = self._breaker.failures(key)
            data |= {"failures": failures, "paused_until": outcomes.iso(until)}
            data["error"] = outcome.error
            self._metrics.outbox_pauses.labels(channel).inc()
            log.warning(
                "outbox: %s target %r of account %d failed %d times in a row (%s); paused until %s",
                channel,
                target,
                account_id,
                failures,
                outcome.error,
                data["paused_until"],
            )
        else:
            log.warning("outbox: %s target %r of account %d resumed", channel, target, account_id)
        self._gauge_paused()
        event_type = p.CHANNEL_PAUSED if change is Change.PAUSED else p.CHANNEL_RESUMED
        try:
            await self._store.append(p.outbox_stream(account_id), [NewEvent(event_type, data)], ANY)
        except StoreUnavailableError as exc:  # the pause holds in memory all the same
            log.warning("outbox: could not record %s of %r: %s", event_type, target, exc)

    def _gauge_paused(self) -> None:
        counts = self._breaker.paused_by_channel(self._clock.now())
        for channel in p.CHANNELS:
            self._metrics.outbox_paused.labels(channel).set(counts.get(channel, 0))


OUTBOX = web.AppKey("outbox", Outbox)
CLOCK = web.AppKey("outbox_clock", Clock)


@contextlib.asynccontextmanager
async def running(app: web.Application, runner: ProjectionRunner) -> AsyncIterator[None]:
    """Run an outbox beside the projections for as long as the app runs. It sends only
    while ``runner.is_leader`` (one process per log: see docs/outbox.md)."""
    outbox = Outbox(
        app[STORE],
        runner,
        app[CONFIG],
        metrics=app[METRICS],
        clock=app.get(CLOCK),
        is_leader=lambda: runner.is_leader,
    )
    app[OUTBOX] = outbox
    async with sending(outbox):
        yield


@contextlib.asynccontextmanager
async def sending(outbox: Outbox) -> AsyncIterator[None]:
    """Run ``outbox`` as a task for the duration; on leaving, close it gracefully (sends
    under way finish and are recorded) and log how it ended if it failed."""
    task = asyncio.get_running_loop().create_task(outbox.run())
    try:
        yield
    finally:
        await outbox.close()
        await reap(task, log, "the outbox had failed")
