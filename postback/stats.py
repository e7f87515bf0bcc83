"""Goal statistics for operators (``GET /api/v1/stats``), from the goal_stats projection."""

from __future__ import annotations

from datetime import date
from functools import partial

from aiohttp import web

from postback.errors import bad_request, not_found
from postback.http import json_response
from postback.keys import DIRECTORY
from postback.operator import account_of, plain_integer
from postback.postbacks import fresh_runner
from projections.stats_query import parse_as_of, parse_group_by, query_stats


def _date(request: web.Request, name: str) -> date | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise bad_request("bad_parameter", f"{name!r} must be a date (YYYY-MM-DD)") from exc


async def get_stats(request: web.Request) -> web.Response:
    """Counts, exact unique subscribers and exact sums, grouped in any IANA time zone.

    ``spot`` takes a spot token or id of the account; ``as_of`` an ISO time (local to
    ``tz`` when it has no offset): only what the log held then is counted.
    """
    account = await account_of(request)
    query = request.query
    tz = query.get("tz") or "UTC"
    spot_id = None
    if query.get("spot"):
        directory = request.app[DIRECTORY]
        spot = await directory.spot_by_token(query["spot"])
        spot_number = plain_integer(query["spot"])
        if spot is None and spot_number is not None:
            spot = directory.spots.get(spot_number)
        if spot is None or spot.account_id != account.id:
            raise not_found("spot_not_found", "no such spot in this account")
        spot_id = spot.id
    try:
        as_of = parse_as_of(query["as_of"], tz) if query.get("as_of") else None
        call = partial(
            query_stats,
            account_id=account.id,
            date_from=_date(request, "from"),
            date_to=_date(request, "to"),
            spot_id=spot_id,
            group_by=parse_group_by(query.get("group_by")),
            tz=tz,
            as_of=as_of,
        )
        runner = await fresh_runner(request)
        rows = await runner.query(call)
    except ValueError as exc:
        raise bad_request("bad_parameter", str(exc)) from exc
    return json_response({"rows": rows})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/stats", get_stats)
