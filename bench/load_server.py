"""The bare server of ``bench/load.py``: aiohttp answering ``{"success": true}``, nothing else.

It serves the partner postback URLs (and ``/healthz``) on the default asyncio loop, the way
``postback serve`` does, so the load bench can put the service next to what aiohttp alone
costs. Run by the bench; by hand::

    python bench/load_server.py --port 8090
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

POSTBACK_PATHS = ("/api/v1/api_send_postback", "/postback")


async def answer(request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps({"success": True}), status=200, content_type="application/json"
    )


def create_bare_app() -> web.Application:
    app = web.Application()
    for path in POSTBACK_PATHS:
        for variant in (path, path + "/"):
            app.router.add_get(variant, answer, allow_head=False)
            app.router.add_post(variant, answer)
    app.router.add_get("/healthz", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    web.run_app(create_bare_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
