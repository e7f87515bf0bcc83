"""The postback log for operators (``GET /api/v1/postbacks``), served by a projection.

The projection runner runs inside the service; a listing first waits (briefly) for the
projection to reach the log's current end, so an operator sees the postback they just
sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from postback import outbox, projector
from postback.backend import projection_runner
from postback.http import json_response
from postback.keys import CONFIG, METRICS, STORE
from postback.operator import account_of, int_param
from postback.tasks import reap
from projections.postback_log import list_postbacks
from projections.runner import ProjectionRunner

RUNNER = web.AppKey("projection_runner", ProjectionRunner)
CHILD = web.AppKey("projector_child", projector.ChildProjector)
log = logging.getLogger("postback.projections")
_FRESHNESS_WAIT = 5.0
_STOP_WAIT = 10.0


@contextlib.asynccontextmanager
async def projections(app: web.Application) -> AsyncIterator[None]:
    """Run the projections for as long as the service runs, and the outbox beside them
    (unless ``--no-projections`` or ``POSTBACK_OUTBOX=off``): in this process, or with
    ``projector="process"`` in a supervised child (:mod:`postback.projector`), which this
    process's runner then follows."""
    config = app[CONFIG]
    in_child = config.run_projections and config.projector == "process"
    runner = projection_runner(app[STORE], config, follow_only=in_child)
    app[RUNNER] = runner
    task = asyncio.get_running_loop().create_task(runner.run()) if config.run_projections else None
    try:
        async with contextlib.AsyncExitStack() as beside:
            if in_child:
                child = await beside.enter_async_context(
                    projector.running(config, runner.database, app[METRICS].relay_outbox)
                )
                app[CHILD] = child
                runner.on_behind = child.hurry  # a read that waits hurries the child
            elif config.run_projections and config.outbox:
                await beside.enter_async_context(outbox.running(app, runner))
            yield
    finally:
        try:
            if task is not None:
                runner.stop()  # it applies what it gathered during its live pause, then ends
                await asyncio.wait({task}, timeout=_STOP_WAIT)
                await reap(task, log, "the projection runner had failed")
        finally:
            await runner.close()


async def list_postback_log(request: web.Request) -> web.Response:
    account = await account_of(request)
    clickid = request.query.get("clickid") or None
    status = int_param(request, "status", 0, low=0, high=599) or None
    after = int_param(request, "after", 0)
    limit = int_param(request, "limit", 100, low=1, high=1000)
    runner = await fresh_runner(request)
    rows = await list_postbacks(
        runner,
        account_id=account.id,
        clickid=clickid,
        status=status,
        after=after,
        limit=limit,
    )
    return json_response({"postbacks": rows, "next_after": rows[-1]["position"] if rows else after})


async def fresh_runner(request: web.Request) -> ProjectionRunner:
    """The runner, once it has applied the log up to now (waiting at most a few seconds).

    With ``serve --no-projections`` another process (``postback project``) applies the
    log; listings then show what it has applied so far, without waiting.
    """
    runner = request.app[RUNNER]
    if not request.app[CONFIG].run_projections:
        return runner
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            runner.wait_until(await request.app[STORE].last_position()), _FRESHNESS_WAIT
        )
    return runner


def observe_lag(app: web.Application) -> None:
    app[METRICS].projection_lag.set(app[RUNNER].lag)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/postbacks", list_postback_log)
