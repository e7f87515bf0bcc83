"""The aiohttp application: ``create_app(config)`` builds it; nothing is created at import.

Resources (the event store, the directory, the projections) are opened and closed in
``cleanup_ctx``. Errors become JSON answers in one middleware: an :class:`ApiError`
with its own status, an unknown route or method as 404/405, the store being unavailable
as 503, and anything unexpected as a logged 500, never an HTML page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from eventstore import EventStoreError, StoreUnavailableError
from postback import deliveries_api, operator, partner, postbacks, stats
from postback.backend import open_store
from postback.config import Config
from postback.directory import Directory
from postback.errors import ApiError
from postback.http import MAX_BODY, json_response
from postback.keys import CONFIG, DIRECTORY, METRICS, PARTNERS, STORE
from postback.metrics import Metrics
from postback.outbox import CLOCK, Clock
from postback.proxies import trusted_source
from postback.service import PartnerService
from projections.runner import ProjectionStoppedError

log = logging.getLogger("postback")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return json_response(error.body, error.status, headers=error.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response(
            {"success": False, "code": exc.reason.lower().replace(" ", "_"), "error": exc.reason},
            exc.status,
        )
    except ProjectionStoppedError:
        log.error("read of a projection whose runner has stopped")
        return json_response(
            {"success": False, "code": "unavailable", "error": "statistics are unavailable"}, 503
        )
    except StoreUnavailableError as exc:
        log.error("store unavailable: %s", exc)
        return json_response(
            {"success": False, "code": "unavailable", "error": "the event log is unavailable"}, 503
        )
    except EventStoreError:
        log.exception("event store error")
        return json_response(
            {"success": False, "code": "store_error", "error": "internal error"}, 500
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"success": False, "code": "internal", "error": "internal error"}, 500)


@web.middleware
async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    request.app[METRICS].observe_request(
        name, request.method, response.status, time.perf_counter() - started
    )
    return response


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    metrics = app[METRICS]

    def committed(events: int, seconds: float) -> None:
        metrics.observe_batch(events, seconds)
        child = app.get(postbacks.CHILD)
        if child is not None:
            child.log_grew()  # the projections process looks at the log now

    store = await open_store(config, on_batch=committed)
    try:
        directory = Directory(store)
        await directory.load()
        app[STORE] = store
        app[DIRECTORY] = directory
        app[PARTNERS] = PartnerService(store, directory)
        async with postbacks.projections(app):
            yield
    finally:
        await store.close()


async def healthz(request: web.Request) -> web.Response:
    """200 when the log answers and its writer runs; 503 otherwise. Also tells how far the
    projections are and whether this instance leads them."""
    store = request.app[STORE]
    position = await store.last_position()
    if not store.writable:
        return json_response({"ok": False, "error": "the log writer is not running"}, 503)
    if store.write_failure is not None:  # the last batch failed: does the database take
        try:  # writes again? (no append may come to tell: the balancer sends no traffic)
            await store.check_writable()
        except EventStoreError as exc:
            log.error("healthz: the log takes no appends: %s", exc)
            return json_response({"ok": False, "error": "the log takes no appends"}, 503)
    runner = request.app[postbacks.RUNNER]
    return json_response(
        {
            "ok": True,
            "position": position,
            # Several instances on PostgreSQL: one leads (applies the projections, sends the
            # outbox); the others follow its checkpoints.
            "projections": {"position": runner.position, "leader": _leads(request.app)},
        }
    )


def _leads(app: web.Application) -> bool:
    """Whether this instance leads the projections: its runner, or its child's."""
    child = app.get(postbacks.CHILD)
    return app[postbacks.RUNNER].is_leader or (child is not None and child.leads)


async def metrics_endpoint(request: web.Request) -> web.Response:
    postbacks.observe_lag(request.app)
    return web.Response(
        body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8"
    )


def create_app(config: Config, *, clock: Clock | None = None) -> web.Application:
    """The service. ``clock`` is the outbox's time (tests move it by hand)."""
    middlewares: list[Middleware] = [measured, errors_as_json]
    if config.trusted_proxies:
        middlewares.insert(0, trusted_source(config.trusted_proxies))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=MAX_BODY,
        # Bodies are decoded by postback.codings, which refuses a compressed stream cut
        # short; aiohttp's own decoding would pass on what it got of it.
        handler_args={"auto_decompress": False},
    )
    app[CONFIG] = config
    app[METRICS] = Metrics()
    if clock is not None:
        app[CLOCK] = clock
    app.cleanup_ctx.append(_resources)
    partner.add_routes(app)
    operator.add_routes(app)
    deliveries_api.add_routes(app)
    postbacks.add_routes(app)
    stats.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
