"""Partner requests: identity, validation, decision, durable append, and the postback log.

Every request that reaches a partner endpoint ends as exactly one entry of the postback
log: accepted ones as the events they caused (their metadata holds the request and the
answer), rejected and repeated ones as an event of the ``postback-log`` stream. Either
way the entry is durable before the partner gets the answer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from eventstore import (
    ANY,
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    NewEvent,
)
from postback.amounts import AmountError, parse_amount
from postback.decide import Conversion, decide, txid_event_id
from postback.directory import Directory
from postback.errors import ApiError, bad_request
from postback.locks import KeyedLocks
from postback.model import (
    POSTBACK_LOG,
    STANDARD_GOALS,
    Subscriber,
    SubscriberState,
    subscriber_stream,
)

SUBSCRIBER_NOT_FOUND = "Subscriber not exists with this clickid"  # the seed's own words
CHAT_NEEDS_USER = "That's endpoint for chat"  # the seed's own words
_MAX_ATTEMPTS = 20
_MAX_CACHED_STATES = 1_000_000


@dataclass(slots=True)
class PartnerRequest:
    """A partner request: its parameters (first value of each) and what the log keeps."""

    params: dict[str, str]
    record: dict[str, Any]

    def get(self, name: str) -> str | None:
        value = self.params.get(name)
        return value if value else None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


def _chat_error(status: int, code: str, text: str) -> ApiError:
    """The chat endpoint's errors have the seed's exact body: no ``code`` field."""
    return ApiError(status, code, text, body={"success": False, "error": text})


def _numeric_if_possible(user_id: str) -> int | str:
    """The Telegram id as a JSON number (as the seed shows it) when it is the plain text of
    an integer that fits 64 bits (a group's id is negative); otherwise the text as given,
    so that ``"00123"`` or ``"+5"`` is not answered as another id."""
    if len(user_id) > 20 or not user_id.isascii():
        return user_id
    try:
        number = int(user_id)
    except ValueError:
        return user_id
    return number if str(number) == user_id and -(2**63) <= number < 2**63 else user_id


class PartnerService:
    def __init__(self, store: EventStore, directory: Directory) -> None:
        self._store = store
        self._directory = directory
        self._states: dict[int, SubscriberState] = {}
        self._locks = KeyedLocks()

    # -- postbacks ------------------------------------------------------------------

    async def postback(self, request: PartnerRequest) -> Answer:
        """Answer a postback; raises nothing but store errors (the app maps those)."""
        account: list[int | None] = [None]
        try:
            return await self._postback(request, account)
        except ApiError as error:
            await self.log_rejection(request.record, account[0], error)
            return Answer(error.status, error.body)

    async def _postback(self, request: PartnerRequest, account: list[int | None]) -> Answer:
        clickid = request.get("clickid")
        user_id = request.get("user_id")
        spot_token = request.get("spot")
        if clickid is None and (user_id is None or spot_token is None):
            if spot_token is not None:  # attribute the refusal to the spot's account
                spot = await self._directory.spot_by_token(spot_token)
                account[0] = spot.account_id if spot is not None else None
            raise bad_request("no_identity", "clickid, or user_id together with spot, is required")
        raw_amount = request.get("sum") or request.get("sumrd")
        try:
            amount = None if raw_amount is None else parse_amount(raw_amount)
        except AmountError as exc:
            # Refused before the lookup (the order of checks), but attributed to the
            # subscriber's account when there is one, so the account sees it in its log.
            with contextlib.suppress(ApiError):
                await self._find_subscriber(clickid, user_id, spot_token, account)
            raise bad_request("bad_amount", f"Invalid amount format: {exc}") from exc

        subscriber = await self._find_subscriber(clickid, user_id, spot_token, account)
        conversion = Conversion(
            goal=request.get("goal") or "",
            amount=amount,
            player_id=request.get("playerid"),
            txid=request.get("txid"),
        )
        # One decision at a time per subscriber in this process: racing postbacks then
        # queue instead of failing each other's expected version over and over. Other
        # processes are still kept out by the expected version of the append.
        async with self._locks.hold(subscriber.id):
            if conversion.txid is not None:
                repeated = await self._repeat_of(subscriber, conversion.txid, request)
                if repeated is not None:
                    return repeated
            return await self._record(subscriber, conversion, request)

    async def _find_subscriber(
        self,
        clickid: str | None,
        user_id: str | None,
        spot_token: str | None,
        account: list[int | None],
    ) -> Subscriber:
        found: Subscriber | None
        if clickid is not None:
            found = await self._directory.subscriber_by_clickid(clickid)
        else:
            assert user_id is not None
            assert spot_token is not None
            spot = await self._directory.spot_by_token(spot_token)
            if spot is not None:
                account[0] = spot.account_id
            found = (
                None if spot is None else await self._directory.subscriber_in_spot(spot, user_id)
            )
        if found is None:
            raise ApiError(404, "subscriber_not_found", SUBSCRIBER_NOT_FOUND)
        account[0] = found.account_id
        return found

    async def _record(
        self, subscriber: Subscriber, conversion: Conversion, request: PartnerRequest
    ) -> Answer:
        stream = subscriber_stream(subscriber.id)
        metadata = {"postback": {**request.record, "status": 200, "response": {"success": True}}}
        for attempt in range(_MAX_ATTEMPTS):
            state = await self._state(subscriber.id, reload=attempt > 0)
            goal = conversion.goal
            wanted = goal if goal and goal not in STANDARD_GOALS else None
            goals = await self._directory.custom_goals(subscriber.account_id, wanted)
            try:
                events = decide(subscriber, state, conversion, goals, metadata)
            except ApiError as refusal:
                # A conflict may be this very txid, recorded by another process since
                # the check above: then it is answered like the first, not refused.
                if refusal.status == 409 and conversion.txid is not None:
                    repeated = await self._repeat_of(subscriber, conversion.txid, request)
                    if repeated is not None:
                        return repeated
                raise
            try:
                result = await self._store.append(stream, events, expected_version=state.version)
            except ConcurrencyError:
                # Another writer got there first; it may be a retry of this very txid
                # from another process, which must be answered like the first.
                if conversion.txid is not None:
                    repeated = await self._repeat_of(subscriber, conversion.txid, request)
                    if repeated is not None:
                        return repeated
                continue
            except DuplicateEventError:
                # The txid was recorded meanwhile by a racing retry with other content.
                assert conversion.txid is not None
                repeated = await self._repeat_of(subscriber, conversion.txid, request)
                if repeated is not None:
                    return repeated
                raise
            if result.duplicate:
                # The same txid with the same content was recorded by a racing request
                # (another process): answer like the first and log this request as a repeat.
                assert conversion.txid is not None
                repeated = await self._repeat_of(subscriber, conversion.txid, request)
                return repeated or Answer(200, {"success": True, "position": result.last_position})
            self._advance(subscriber.id, state, events)
            return Answer(200, {"success": True, "position": result.last_position})
        raise ApiError(503, "busy", "too many concurrent postbacks for this subscriber; retry")

    async def _repeat_of(
        self, subscriber: Subscriber, txid: str, request: PartnerRequest
    ) -> Answer | None:
        original = await self._store.get_event(txid_event_id(subscriber.account_id, txid))
        if original is None:
            return None
        answer = Answer(200, {"success": True, "position": original.position})
        await self._log(
            "PostbackRepeated",
            {
                "account_id": subscriber.account_id,
                "subscriber_id": subscriber.id,
                "txid": txid,
                "original_position": original.position,
            },
            request.record,
            answer,
        )
        return answer

    # -- chat Contact events --------------------------------------------------------

    async def contact(self, request: PartnerRequest) -> Answer:
        account: int | None = None
        try:
            spot_token = request.get("spot")
            spot = None if spot_token is None else await self._directory.spot_by_token(spot_token)
            if spot is None:
                raise ApiError(403, "forbidden", "unknown spot token", body={})
            account = spot.account_id
            user_id = request.get("user_id")
            if user_id is None:
                raise _chat_error(400, "no_user_id", CHAT_NEEDS_USER)
            subscriber = await self._directory.subscriber_in_spot(spot, user_id)
            if subscriber is None:
                raise _chat_error(404, "subscriber_not_found", SUBSCRIBER_NOT_FOUND)
        except ApiError as error:
            await self.log_rejection(request.record, account, error)
            return Answer(error.status, error.body)

        body = {
            "success": True,
            "subscriber": {
                "user_id": _numeric_if_possible(user_id),
                "id": subscriber.id,
                "spot": {"id": spot.id, "title": spot.title},
            },
        }
        event = NewEvent(
            "ContactRecorded",
            {
                "subscriber_id": subscriber.id,
                "account_id": subscriber.account_id,
                "spot_id": spot.id,
                "user_id": subscriber.user_id,
            },
            {"postback": {**request.record, "status": 200, "response": body}},
        )
        async with self._locks.hold(subscriber.id):
            result = await self._store.append(subscriber_stream(subscriber.id), [event], ANY)
            state = self._states.get(subscriber.id)
            if state is not None:
                if state.version == result.stream_version - 1:
                    state.version = result.stream_version
                else:
                    del self._states[subscriber.id]
        return Answer(200, body)

    # -- subscriber state, and the log -----------------------------------------------

    async def _state(self, subscriber_id: int, *, reload: bool) -> SubscriberState:
        state = None if reload else self._states.get(subscriber_id)
        if state is None:
            state = SubscriberState()
            for event in await self._store.read_stream(subscriber_stream(subscriber_id)):
                state.apply(event.type, event.data)
            if len(self._states) >= _MAX_CACHED_STATES:
                self._states.clear()
            self._states[subscriber_id] = state
        return state

    def _advance(self, subscriber_id: int, state: SubscriberState, events: list[NewEvent]) -> None:
        cached = self._states.get(subscriber_id)
        if cached is not state:
            return  # reloaded meanwhile; the reload is at least as new
        for event in events:
            state.apply(event.type, dict(event.data))

    async def log_rejection(
        self, record: dict[str, Any], account_id: int | None, error: ApiError
    ) -> None:
        """Record a refused partner request in the postback log (durably)."""
        await self._log(
            "PostbackRejected",
            {
                "account_id": account_id,
                "status": error.status,
                "code": error.code,
                "error": error.message,
            },
            record,
            Answer(error.status, error.body),
        )

    async def _log(
        self, event_type: str, data: dict[str, Any], record: dict[str, Any], answer: Answer
    ) -> None:
        metadata = {"postback": {**record, "status": answer.status, "response": answer.body}}
        await self._store.append(POSTBACK_LOG, [NewEvent(event_type, data, metadata)], ANY)
