"""Partner endpoints (API.md sections 1 and 2): postbacks and chat Contact events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from postback.errors import ApiError
from postback.http import (
    clean,
    json_response,
    partner_params,
    read_body,
    request_record,
    summarize,
)
from postback.keys import PARTNERS
from postback.service import Answer, PartnerRequest

Handler = Callable[[web.Request], Awaitable[web.Response]]
POSTBACK_PATHS = ("/api/v1/api_send_postback", "/postback")
CHAT_PATHS = ("/spot/postback/chat",)


async def _partner_request(request: web.Request, endpoint: str) -> PartnerRequest | Answer:
    """The parsed request, or the answer already given (and logged) to an unparseable one."""
    try:
        body = await read_body(request)
    except ApiError as error:  # too large to read: logged without its body
        record = request_record(request, endpoint, b"")
        summarize(record, {clean(k): clean(v) for k, v in reversed(list(request.query.items()))})
        await request.app[PARTNERS].log_rejection(record, None, error)
        return Answer(error.status, error.body)
    record = request_record(request, endpoint, body)
    try:
        params = partner_params(request, body)
    except ApiError as error:
        summarize(record, {})
        await request.app[PARTNERS].log_rejection(record, None, error)
        return Answer(error.status, error.body)
    summarize(record, params)
    return PartnerRequest(params, record)


async def postback(request: web.Request) -> web.Response:
    parsed = await _partner_request(request, "postback")
    if isinstance(parsed, Answer):
        return json_response(parsed.body, parsed.status)
    answer = await request.app[PARTNERS].postback(parsed)
    return json_response(answer.body, answer.status)


async def chat_contact(request: web.Request) -> web.Response:
    parsed = await _partner_request(request, "chat")
    if isinstance(parsed, Answer):
        return json_response(parsed.body, parsed.status)
    answer = await request.app[PARTNERS].contact(parsed)
    return json_response(answer.body, answer.status)


async def _other_method(request: web.Request, endpoint: str) -> web.Response:
    """405 for methods other than GET and POST, logged like every partner request."""
    record = request_record(request, endpoint, b"")
    summarize(record, {clean(k): clean(v) for k, v in reversed(list(request.query.items()))})
    error = ApiError(405, "method_not_allowed", "use GET or POST")
    await request.app[PARTNERS].log_rejection(record, None, error)
    return json_response(error.body, error.status, headers={"Allow": "GET, POST"})


def _dispatch(handler: Handler, endpoint: str) -> Handler:
    async def dispatch(request: web.Request) -> web.Response:
        if request.method in ("GET", "POST"):
            return await handler(request)
        return await _other_method(request, endpoint)

    return dispatch


def add_routes(app: web.Application) -> None:
    for handler, endpoint, paths in (
        (postback, "postback", POSTBACK_PATHS),
        (chat_contact, "chat", CHAT_PATHS),
    ):
        for path in paths:
            for variant in (path, path + "/"):
                app.router.add_route("*", variant, _dispatch(handler, endpoint))
