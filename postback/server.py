"""The HTTP server around the app: aiohttp's runner, answering its own errors in JSON.

aiohttp answers a request it cannot parse (a request line or a header over 8190 bytes,
a control character in the URL, a bad ``Content-Length``, TLS sent to the plain port)
itself, before any middleware runs, with a ``text/plain`` 400. Partners get JSON for
every error, so :func:`make_runner` gives the server a request handler whose
:meth:`~aiohttp.web_protocol.RequestHandler.handle_error` answers
``{"success": false, "code": "bad_request", "error": "malformed HTTP request: ..."}`` with
the same status (and, for an error outside any handler, a JSON 500). aiohttp still logs
the error and closes the connection, as it does for its own answer, and the request is
counted in ``/metrics`` under the route ``(unparsed)`` (an error that escaped every
middleware, which aiohttp answers through the same method, under ``(unhandled)``).

Such a request never reaches the application, so it is not in the postback log: it has
no path to tell whether it was meant for a partner endpoint. The access log has it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from postback.access_log import JsonAccessLogger
from postback.keys import METRICS

_MAX_DETAIL = 200
"""Characters of aiohttp's own description kept in the answer at most."""


def error_body(status: int, message: str | None) -> dict[str, Any]:
    """The JSON answer to a request aiohttp refused before the application saw it."""
    if status >= 500:
        return {"success": False, "code": "internal", "error": "internal error"}
    # aiohttp's first line says what is wrong, then quotes the input after a colon.
    lines = (message or "").strip().splitlines()
    detail = lines[0].partition(":")[0].strip() if lines else ""
    text = "malformed HTTP request"
    if detail:
        text += ": " + detail[:_MAX_DETAIL]
    return {"success": False, "code": "bad_request", "error": text}


UNPARSED_ROUTE = "(unparsed)"
"""The ``route`` label of such requests in ``postback_http_requests`` (method ``-``)."""
UNHANDLED_ROUTE = "(unhandled)"
"""The ``route`` label of an error that escaped every middleware (a 500, a bug)."""


class _JsonErrorsRequestHandler(RequestHandler):
    on_refused: Callable[[int], None] | None = None

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own handling first: it logs, and raises if an answer is already under way.
        plain = super().handle_error(request, status, exc, message)
        response = web.Response(
            status=plain.status,
            body=orjson.dumps(error_body(plain.status, message)),
            content_type="application/json",
        )
        response.force_close()
        if self.on_refused is not None:
            self.on_refused(plain.status)
        return response


class _JsonErrorsServer(web.Server):
    """aiohttp's low-level server, handing connections to :class:`_JsonErrorsRequestHandler`."""

    on_refused: Callable[[int], None] | None = None

    def __call__(self) -> RequestHandler:
        handler = _JsonErrorsRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.on_refused = self.on_refused
        return handler


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        server = _JsonErrorsServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )
        metrics = self.app.get(METRICS)
        if metrics is not None:  # counted in /metrics as well: no middleware sees them
            counter = metrics.requests
            server.on_refused = lambda status: counter.labels(
                UNPARSED_ROUTE if status < 500 else UNHANDLED_ROUTE, "-", status
            ).inc()
        return server


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner ``postback serve`` starts ``app`` with: JSON access log, JSON errors."""
    return _Runner(app, access_log_class=JsonAccessLogger)
