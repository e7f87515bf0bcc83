"""Partner endpoints (API.md sections 1 and 2): postbacks and chat Contact events."""

from __future__ import annotations

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


def add_routes(app: web.Application) -> None:
    for handler, paths in ((postback, POSTBACK_PATHS), (chat_contact, CHAT_PATHS)):
        for path in paths:
            for variant in (path, path + "/"):
                app.router.add_get(variant, handler, allow_head=False)
                app.router.add_post(variant, handler)
