"""The ``deliveries`` projection: the outbox's work list and its record (docs/outbox.md).

It folds three kinds of events, in log order:

* **configuration**, into tables of what holds *at that point of the log*:
  ``FacebookConfigured`` (``delivery_facebook``), ``TelegramConfigured``
  (``delivery_telegram``), the ``notify`` text of ``GoalDefined`` (``delivery_goal_notify``),
  ``WebhookRegistered`` and ``WebhookRemoved`` (``delivery_webhooks``), and ``SubscriberCreated`` /
  ``PlayerIdAssigned`` (``delivery_subscribers``: user id, fbclid, fbp, creation time,
  player id);
* **sources**, into ``deliveries`` rows, pending, with everything needed to send them: a
  ``ContactRecorded`` of a spot with Facebook configured makes a ``facebook_capi``
  delivery; a ``GoalReached`` makes a ``telegram`` delivery when the goal has ``notify``
  text and the spot a bot, and one ``webhook`` delivery per webhook of the account;
* **outcomes** (``DeliveryAttempted/Succeeded/Failed/Expired`` in ``delivery-{id}``,
  ``ChannelPaused/Resumed`` in ``outbox-{account}``), into the status, the attempts
  (``delivery_attempts``), the next attempt time, the stream version the sender appends
  after, and per target the consecutive failures and pause (``delivery_circuits``).

The tables, their row types and statements are in :mod:`projections.deliveries_schema`
(the ``secret`` column holds the token or secret needed to send: this file is as sensitive
as the log, which holds them already; the API never shows them), the payloads in
:mod:`projections.delivery_payloads`. Each batch reads the rows it touches once, folds in
memory and writes once; a ``deliveries`` row only moves forward (``last_position``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from eventstore.base import RecordedEvent
from projections import delivery_payloads as p
from projections.database import SqlConnection
from projections.deliveries_schema import (
    CIRCUIT_COLUMNS,
    DELIVERY_COLUMNS,
    INSERT_ATTEMPT,
    SCHEMA_SQL,
    SUBSCRIBER_COLUMNS,
    TABLES,
    UPSERT_CIRCUIT,
    UPSERT_COUNTER,
    UPSERT_DELIVERY,
    UPSERT_FACEBOOK,
    UPSERT_NOTIFY,
    UPSERT_SUBSCRIBER,
    UPSERT_TELEGRAM,
    UPSERT_WEBHOOK,
    CircuitRow,
    Delivery,
    SubscriberRow,
    as_int,
    as_text,
    circuit_values,
    delivery_values,
    micros_of,
    select_in,
    subscriber_values,
)

_OUTCOMES: Final = frozenset(
    {p.DELIVERY_ATTEMPTED, p.DELIVERY_SUCCEEDED, p.DELIVERY_FAILED, p.DELIVERY_EXPIRED}
)
_CONFIGURATION: Final = frozenset(
    {
        "FacebookConfigured",
        "TelegramConfigured",
        "GoalDefined",
        p.WEBHOOK_REGISTERED,
        p.WEBHOOK_REMOVED,
    }
)
_FINAL: Final = {
    p.DELIVERY_SUCCEEDED: p.SUCCEEDED,
    p.DELIVERY_FAILED: p.FAILED,
    p.DELIVERY_EXPIRED: p.EXPIRED,
}


class _Fold:
    """One batch: rows read once, changed in memory, written once at the end."""

    def __init__(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        self.conn = conn
        subscriber_ids = {
            s
            for e in events
            if e.type in ("SubscriberCreated", "PlayerIdAssigned", "ContactRecorded", "GoalReached")
            and (s := as_int(e.data.get("subscriber_id"))) is not None
        }
        delivery_ids = {
            d for e in events if e.type in _OUTCOMES and (d := as_text(e.data.get("delivery_id")))
        }
        self.subscribers: dict[int, SubscriberRow] = {
            row[0]: SubscriberRow(*row)
            for row in select_in(
                conn,
                f"SELECT {', '.join(SUBSCRIBER_COLUMNS)} FROM delivery_subscribers",
                "subscriber_id",
                subscriber_ids,
            )
        }
        self.deliveries: dict[str, Delivery] = {
            row[0]: Delivery(*row)
            for row in select_in(
                conn,
                f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM deliveries",
                "delivery_id",
                delivery_ids,
            )
        }
        self.changed_subscribers: set[int] = set()
        self.changed_deliveries: set[str] = set()
        self.attempts: list[tuple[Any, ...]] = []
        self.circuits: dict[tuple[int, str, str], CircuitRow] = {}
        self.facebook: dict[int, tuple[str, str, str | None] | None] = {}
        self.telegram: dict[int, str | None] = {}
        self.notify: dict[tuple[int, str], str | None] = {}
        self.webhooks: dict[int, list[tuple[int, str, str]]] = {}
        self.seq: int | None = None

    # -- configuration -------------------------------------------------------------

    def facebook_of(self, spot_id: int) -> tuple[str, str, str | None] | None:
        if spot_id not in self.facebook:
            row = self.conn.execute(
                "SELECT pixel_id, access_token, test_event_code FROM delivery_facebook"
                " WHERE spot_id = ?",
                (spot_id,),
            ).fetchone()
            self.facebook[spot_id] = None if row is None else (row[0], row[1], row[2])
        return self.facebook[spot_id]

    def telegram_of(self, spot_id: int) -> str | None:
        if spot_id not in self.telegram:
            row = self.conn.execute(
                "SELECT bot_token FROM delivery_telegram WHERE spot_id = ?", (spot_id,)
            ).fetchone()
            self.telegram[spot_id] = None if row is None else str(row[0])
        return self.telegram[spot_id]

    def notify_of(self, account_id: int, goal: str) -> str | None:
        key = (account_id, goal)
        if key not in self.notify:
            row = self.conn.execute(
                "SELECT notify FROM delivery_goal_notify WHERE account_id = ? AND name = ?", key
            ).fetchone()
            self.notify[key] = None if row is None else str(row[0])
        return self.notify[key]

    def webhooks_of(self, account_id: int) -> list[tuple[int, str, str]]:
        if account_id not in self.webhooks:
            rows = self.conn.execute(
                "SELECT webhook_id, url, secret FROM delivery_webhooks WHERE account_id = ?"
                " ORDER BY webhook_id",
                (account_id,),
            ).fetchall()
            self.webhooks[account_id] = [(int(w), str(u), str(s)) for w, u, s in rows]
        return self.webhooks[account_id]

    def configure(self, event: RecordedEvent) -> None:
        data, conn = event.data, self.conn
        spot_id, account_id = as_int(data.get("spot_id")), as_int(data.get("account_id"))
        if event.type == "FacebookConfigured" and spot_id is not None:
            pixel, token = as_text(data.get("pixel_id")), as_text(data.get("access_token"))
            if pixel and token:
                code = as_text(data.get("test_event_code"))
                conn.execute(UPSERT_FACEBOOK, (spot_id, pixel, token, code))
                self.facebook[spot_id] = (pixel, token, code)
        elif event.type == "TelegramConfigured" and spot_id is not None:
            if bot := as_text(data.get("bot_token")):
                conn.execute(UPSERT_TELEGRAM, (spot_id, bot))
                self.telegram[spot_id] = bot
        elif event.type == "GoalDefined" and account_id is not None:
            if (name := as_text(data.get("name"))) is None:
                return
            notify = as_text(data.get("notify"))
            if notify is None:
                conn.execute(
                    "DELETE FROM delivery_goal_notify WHERE account_id = ? AND name = ?",
                    (account_id, name),
                )
            else:
                conn.execute(UPSERT_NOTIFY, (account_id, name, notify))
            self.notify[(account_id, name)] = notify
        elif event.type == p.WEBHOOK_REGISTERED and account_id is not None:
            webhook_id = as_int(data.get("webhook_id"))
            url, secret = as_text(data.get("url")), as_text(data.get("secret"))
            if webhook_id is not None and url and secret:
                conn.execute(UPSERT_WEBHOOK, (account_id, webhook_id, url, secret))
                self.webhooks.pop(account_id, None)  # re-read, in webhook order
        elif event.type == p.WEBHOOK_REMOVED and account_id is not None:
            conn.execute(
                "DELETE FROM delivery_webhooks WHERE account_id = ? AND webhook_id = ?",
                (account_id, as_int(data.get("webhook_id"))),
            )
            self.webhooks.pop(account_id, None)

    def subscriber_event(self, event: RecordedEvent) -> None:
        data = event.data
        subscriber_id = as_int(data.get("subscriber_id"))
        if subscriber_id is None:
            return
        if event.type == "SubscriberCreated":
            user_id = data.get("user_id")
            if not isinstance(user_id, str):
                return
            self.subscribers[subscriber_id] = SubscriberRow(
                subscriber_id,
                user_id,
                as_text(data.get("clickid")),
                as_text(data.get("fbclid")),
                as_text(data.get("fbp")),
                event.recorded_us,
            )
        elif (known := self.subscribers.get(subscriber_id)) is not None:
            known.player_id = as_text(data.get("player_id"))
        else:
            return
        self.changed_subscribers.add(subscriber_id)

    # -- sources ---------------------------------------------------------------------

    def _create(
        self, event: RecordedEvent, account_id: int, channel: str, target: str, key: str, **row: Any
    ) -> None:
        if self.seq is None:
            found = self.conn.execute(
                "SELECT value FROM delivery_counter WHERE name = 'seq'"
            ).fetchone()
            self.seq = 0 if found is None else int(found[0])
        identifier = p.delivery_id(str(event.event_id), channel, key)
        if identifier in self.deliveries:
            return
        self.seq += 1
        self.deliveries[identifier] = Delivery(
            delivery_id=identifier,
            seq=self.seq,
            account_id=account_id,
            subscriber_id=as_int(event.data.get("subscriber_id")),
            channel=channel,
            target=target,
            source_event_id=str(event.event_id),
            source_type=event.type,
            source_position=event.position,
            source_us=event.recorded_us,
            next_attempt_us=event.recorded_us,
            last_position=event.position,
            **row,
        )
        self.changed_deliveries.add(identifier)

    def contact(self, event: RecordedEvent) -> None:
        data = event.data
        account_id, spot_id = as_int(data.get("account_id")), as_int(data.get("spot_id"))
        if account_id is None or spot_id is None:
            return
        facebook = self.facebook_of(spot_id)
        if facebook is None:
            return
        pixel, token, code = facebook
        subscriber = self.subscribers.get(as_int(data.get("subscriber_id")) or 0)
        user_id = as_text(data.get("user_id")) or (subscriber.user_id if subscriber else None)
        if user_id is None:
            return
        body = p.facebook_body(
            event_id=str(event.event_id),
            event_us=event.recorded_us,
            user_id=user_id,
            fbclid=subscriber.fbclid if subscriber else None,
            fbp=subscriber.fbp if subscriber else None,
            created_us=subscriber.created_us if subscriber else 0,
            test_event_code=code,
        )
        payload = p.canonical_json(body)
        self._create(event, account_id, p.FACEBOOK, pixel, pixel, payload=payload, secret=token)

    def goal(self, event: RecordedEvent) -> None:
        data = event.data
        account_id, spot_id = as_int(data.get("account_id")), as_int(data.get("spot_id"))
        goal = as_text(data.get("goal"))
        subscriber = self.subscribers.get(as_int(data.get("subscriber_id")) or 0)
        if account_id is None or goal is None:
            return
        notify = self.notify_of(account_id, goal)
        bot = None if spot_id is None else self.telegram_of(spot_id)
        if notify is not None and bot is not None and subscriber is not None:
            amount = data.get("amount")
            text = p.render(
                notify,
                {
                    "goal": goal,
                    "amount": amount if isinstance(amount, str) else "",
                    "player_id": subscriber.player_id or "",
                    "user_id": subscriber.user_id,
                    "clickid": subscriber.clickid or "",
                },
            )
            payload = p.canonical_json(p.telegram_body(subscriber.user_id, text))
            target = p.bot_target(bot)
            self._create(event, account_id, p.TELEGRAM, target, target, payload=payload, secret=bot)
        webhooks = self.webhooks_of(account_id)
        if not webhooks:
            return
        payload = p.canonical_json(
            {
                **data,
                "event_id": str(event.event_id),
                "type": event.type,
                "position": event.position,
                "recorded_at": event.recorded_at.isoformat(),
                "user_id": subscriber.user_id if subscriber else None,
                "clickid": subscriber.clickid if subscriber else None,
                "player_id": subscriber.player_id if subscriber else None,
            }
        )
        for webhook_id, url, secret in webhooks:
            key = f"webhook-{webhook_id}"
            self._create(event, account_id, p.WEBHOOK, url, key, payload=payload, secret=secret)

    # -- outcomes --------------------------------------------------------------------

    def circuit(self, account_id: int, channel: str, target: str) -> CircuitRow:
        key = (account_id, channel, target)
        if key not in self.circuits:
            row = self.conn.execute(
                f"SELECT {', '.join(CIRCUIT_COLUMNS)} FROM delivery_circuits"
                " WHERE account_id = ? AND channel = ? AND target = ?",
                key,
            ).fetchone()
            self.circuits[key] = CircuitRow(*row) if row else CircuitRow(*key)
        return self.circuits[key]

    def outcome(self, event: RecordedEvent) -> None:
        data = event.data
        delivery = self.deliveries.get(as_text(data.get("delivery_id")) or "")
        if delivery is None or event.position <= delivery.last_position:
            return
        delivery.version = event.version
        delivery.last_position = event.position
        self.changed_deliveries.add(delivery.delivery_id)
        if event.type in _FINAL:
            delivery.status = _FINAL[event.type]
            delivery.next_attempt_us = None
            delivery.completed_us = event.recorded_us
            reason = data.get("reason")
            delivery.reason = reason if isinstance(reason, str) else None
            return
        attempt = as_int(data.get("attempt")) or delivery.attempts + 1
        delivery.attempts = max(delivery.attempts, attempt)
        retry_us = micros_of(data.get("retry_at"))
        if retry_us is not None:
            delivery.next_attempt_us = retry_us
        error, outcome = data.get("error"), data.get("outcome")
        self.attempts.append(
            (
                delivery.delivery_id,
                attempt,
                event.position,
                micros_of(data.get("attempted_at")),
                as_int(data.get("status")),
                error if isinstance(error, str) else None,
                as_text(data.get("response")),
                outcome if isinstance(outcome, str) else None,
                retry_us,
            )
        )
        # As postback.channels.breaker.Breaker.record: a transient failure counts; any
        # other answer (a 2xx, a 4xx: the target is up) ends the row and any pause.
        circuit = self.circuit(delivery.account_id, delivery.channel, delivery.target)
        if data.get("transient") is True:
            circuit.failures += 1
            circuit.last_error = _attempt_error(data)
        else:
            circuit.failures = 0
            circuit.paused_until_us = None

    def pause(self, event: RecordedEvent) -> None:
        data = event.data
        account_id = as_int(data.get("account_id"))
        channel, target = as_text(data.get("channel")), as_text(data.get("target"))
        if account_id is None or channel is None or target is None:
            return
        circuit = self.circuit(account_id, channel, target)
        if event.type == p.CHANNEL_PAUSED:
            circuit.paused_until_us = micros_of(data.get("paused_until"))
        else:
            circuit.paused_until_us = None
            circuit.failures = 0

    def write(self) -> None:
        conn = self.conn
        conn.executemany(
            UPSERT_DELIVERY,
            [delivery_values(self.deliveries[d]) for d in sorted(self.changed_deliveries)],
        )
        conn.executemany(INSERT_ATTEMPT, self.attempts)
        conn.executemany(
            UPSERT_SUBSCRIBER,
            [subscriber_values(self.subscribers[s]) for s in sorted(self.changed_subscribers)],
        )
        conn.executemany(UPSERT_CIRCUIT, [circuit_values(c) for c in self.circuits.values()])
        if self.seq is not None:
            conn.execute(UPSERT_COUNTER, ("seq", self.seq))


def _attempt_error(data: dict[str, Any]) -> str | None:
    status, error = as_int(data.get("status")), as_text(data.get("error"))
    if error:
        return error
    return None if status is None else f"HTTP {status}"


class DeliveriesProjection:
    """See the module docstring. Stateless: any number of runners may share one."""

    name = "deliveries"
    rebuild_weight = 1.3  # seconds per million events of bench/rebuild.py's log
    schema_sql: Sequence[str] = SCHEMA_SQL
    reads_event_fields: frozenset[str] = frozenset()  # no stream, metadata or hash

    def apply_batch(self, conn: SqlConnection, events: Sequence[RecordedEvent]) -> None:
        fold = _Fold(conn, events)
        for event in events:
            kind = event.type
            if kind in _CONFIGURATION:
                fold.configure(event)
            elif kind in ("SubscriberCreated", "PlayerIdAssigned"):
                fold.subscriber_event(event)
            elif kind == "ContactRecorded":
                fold.contact(event)
            elif kind == "GoalReached":
                fold.goal(event)
            elif kind in _OUTCOMES:
                fold.outcome(event)
            elif kind in (p.CHANNEL_PAUSED, p.CHANNEL_RESUMED):
                fold.pause(event)
        fold.write()

    def reset(self, conn: SqlConnection) -> None:
        for table in TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
