"""Partner endpoints (API.md sections 1 and 2): postbacks and chat Contact events."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from postback.errors import ApiError, bad_request
from postback.http import (
    json_response,
    partner_params,
    read_body,
    request_record,
    summarize,
)
from postback.keys import PARTNERS
from postback.service import Answer, PartnerRequest, PartnerService

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.Response]]
Serve = Callable[[PartnerService, PartnerRequest], Awaitable[Answer]]
POSTBACK_PATHS = ("/api/v1/api_send_postback", "/postback")
CHAT_PATHS = ("/spot/postback/chat",)


async def _partner_request(request: web.Request, endpoint: str) -> PartnerRequest | Answer:
    """The parsed request, or the answer already given (and logged) to an unparseable one."""
    try:
        body = await read_body(request)
    except ApiError as error:  # too large, or not readable: logged without its body
        record = request_record(request, endpoint, b"")
        summarize(record, partner_params(request, b""))
        await request.app[PARTNERS].log_rejection(record, None, error)
        return Answer(error.status, error.body)
    record = request_record(request, endpoint, body)
    try:
        params = partner_params(request, body)
    except Exception as exc:
        # Whatever a body does to a parser, the partner gets a 400 and the log keeps the
        # request: never a 500 that leaves no trace of what was sent.
        if isinstance(exc, ApiError):
            refusal = exc
        else:
            log.exception("a partner request's parameters could not be read")
            refusal = bad_request("bad_body", "the request's parameters cannot be read")
        summarize(record, {})
        await request.app[PARTNERS].log_rejection(record, None, refusal)
        return Answer(refusal.status, refusal.body)
    summarize(record, params)
    return PartnerRequest(params, record)


def _handler(endpoint: str, serve: Serve) -> Handler:
    """A partner endpoint: parse (logging what cannot be parsed), then let the service answer."""

    async def handle(request: web.Request) -> web.Response:
        parsed = await _partner_request(request, endpoint)
        if isinstance(parsed, PartnerRequest):
            parsed = await serve(request.app[PARTNERS], parsed)
        return json_response(parsed.body, parsed.status)

    return handle


async def _other_method(request: web.Request, endpoint: str) -> web.Response:
    """405 for methods other than GET and POST, logged like every partner request."""
    record = request_record(request, endpoint, b"")
    summarize(record, partner_params(request, b""))
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
    for endpoint, serve, paths in (
        ("postback", PartnerService.postback, POSTBACK_PATHS),
        ("chat", PartnerService.contact, CHAT_PATHS),
    ):
        handler = _dispatch(_handler(endpoint, serve), endpoint)
        for path in paths:
            for variant in (path, path + "/"):
                app.router.add_route("*", variant, handler)
