"""Outbound deliveries per second: Contact events to a local Conversions API stand-in.

Run from the repository root::

    python bench/outbox.py                        # 10,000 Contacts, the default concurrency
    python bench/outbox.py --contacts 2000 --concurrency 64 --live-rate 200

1. Seeds a fresh SQLite log (in a temporary directory): an account, a spot with Facebook
   configured, ``--contacts / 10`` subscribers and ``--contacts`` ``ContactRecorded``
   events (what the chat endpoint appends), then applies every projection once, so the
   ``deliveries`` table holds the backlog.
2. Starts the receiver in a child process (so it does not share the sender's event loop):
   a bare aiohttp app answering ``POST /{version}/{pixel}/events`` like the Conversions
   API and keeping, per event id, the raw request count and the first arrival time.
3. **Backlog**: runs the service's own projection runner and outbox (the shipped
   ``Config``, at ``--concurrency``) until every delivery is recorded as succeeded:
   deliveries/s = contacts / seconds from the outbox's start to idle. Every delivery is
   two appends' worth of events (``DeliveryAttempted`` + ``DeliverySucceeded``, one append,
   ``synchronous=FULL``) and a projection batch, besides the HTTP request.
4. **Live** (``--live-rate R``, 0 to skip): appends Contacts at R per second for
   ``--live-seconds`` while the outbox runs; event-to-delivery latency = the receiver's
   first arrival minus the event's ``recorded_at``: p50 and p99.

Checks that the receiver saw every event id (and how many raw duplicates: 0 expected).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Make "python bench/outbox.py" work from the repository root without installing.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from eventstore.base import NewEvent
from eventstore.sqlite import SQLiteEventStore
from postback.config import Config
from postback.outbox import Outbox
from projections.catalog import all_projections
from projections.runner import ProjectionRunner

OK = {"events_received": 1, "messages": [], "fbtrace_id": "bench"}


# -- the receiver (child process) ----------------------------------------------------------


def serve_receiver() -> None:
    seen: dict[str, list[float]] = {}

    async def events(request: web.Request) -> web.Response:
        body = await request.json()
        event_id = body["data"][0]["event_id"]
        seen.setdefault(event_id, []).append(time.time())
        return web.json_response(OK)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({k: [len(v), v[0]] for k, v in seen.items()})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{version}/{pixel}/events", events)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the log ---------------------------------------------------------------------------------


async def seed(store: SQLiteEventStore, contacts: int) -> None:
    await store.append(
        "accounts",
        [NewEvent("AccountCreated", {"account_id": 1, "name": "bench", "api_key_sha256": "x"})],
    )
    await store.append(
        "spots",
        [NewEvent("SpotCreated", {"spot_id": 1, "account_id": 1, "title": "bot", "token": "tok"})],
    )
    facebook = {"spot_id": 1, "account_id": 1, "pixel_id": "1234567890", "access_token": "EAAB"}
    await store.append("spot-settings-1", [NewEvent("FacebookConfigured", facebook)])
    subscribers = max(1, contacts // 10)
    created = [
        NewEvent(
            "SubscriberCreated",
            {
                "subscriber_id": n,
                "account_id": 1,
                "spot_id": 1,
                "spot_token": "tok",
                "user_id": str(7_000_000 + n),
                "clickid": f"C{n}",
                "fbclid": f"IwAR{n}" if n % 2 else None,
                "fbp": f"fb.1.1700000000000.{n}" if n % 3 else None,
            },
        )
        for n in range(1, subscribers + 1)
    ]
    for start in range(0, len(created), 1000):
        await store.append("subscribers", created[start : start + 1000])
    await contact_burst(store, contacts, subscribers)


async def contact_burst(store: SQLiteEventStore, contacts: int, subscribers: int) -> None:
    async def one(n: int) -> None:
        subscriber = 1 + n % subscribers
        data = {
            "subscriber_id": subscriber,
            "account_id": 1,
            "spot_id": 1,
            "user_id": str(7_000_000 + subscriber),
        }
        await store.append(f"subscriber-{subscriber}", [NewEvent("ContactRecorded", data)])

    for start in range(0, contacts, 2000):
        await asyncio.gather(*(one(n) for n in range(start, min(contacts, start + 2000))))


async def received(base: str) -> dict[str, list[float]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/stats") as response:
        result: dict[str, list[float]] = await response.json()
        return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(args: argparse.Namespace, base: str, directory: str) -> dict[str, Any]:
    db = os.path.join(directory, "bench.db")
    store = await SQLiteEventStore.open(db)
    # As the service runs them: pausing between live transactions when the log is busy.
    runner = ProjectionRunner(store, all_projections(), live_interval=Config().projection_interval)
    try:
        started = time.perf_counter()
        await seed(store, args.contacts)
        seeded = time.perf_counter() - started
        started = time.perf_counter()
        await runner.catch_up()
        projected = time.perf_counter() - started
        config = Config(
            db_path=db,
            facebook_graph_url=base,
            outbox_concurrency=args.concurrency,
        )
        outbox = Outbox(store, runner, config)
        follow = asyncio.create_task(runner.run())
        started = time.perf_counter()
        sending = asyncio.create_task(outbox.run())
        await outbox.wait_idle()
        backlog = time.perf_counter() - started
        live: dict[str, Any] = {}
        if args.live_rate > 0:
            live = await live_phase(args, store, outbox, base)
        await outbox.close()
        await sending
        runner.stop()
        await follow
        counts = await received(base)
        return {
            "seeded_s": seeded,
            "projected_s": projected,
            "backlog_s": backlog,
            "backlog_rate": args.contacts / backlog,
            "unique": len(counts),
            "raw": sum(c for c, _ in counts.values()),
            **live,
        }
    finally:
        await runner.close()
        await store.close()


async def live_phase(
    args: argparse.Namespace, store: SQLiteEventStore, outbox: Outbox, base: str
) -> dict[str, Any]:
    total = int(args.live_rate * args.live_seconds)
    subscribers = max(1, args.contacts // 10)
    first = await store.last_position()
    started = time.perf_counter()
    appends = []
    for n in range(total):
        subscriber = 1 + n % subscribers
        data = {"subscriber_id": subscriber, "account_id": 1, "spot_id": 1}
        data["user_id"] = str(7_000_000 + subscriber)
        contact = NewEvent("ContactRecorded", data)
        appends.append(asyncio.create_task(store.append(f"subscriber-{subscriber}", [contact])))
        delay = started + (n + 1) / args.live_rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*appends)
    await outbox.wait_idle()
    counts = await received(base)
    latencies = []
    async for batch in store.iter_all(first):
        for event in batch:
            if event.type == "ContactRecorded":
                arrival = counts[str(event.event_id)][1]
                latencies.append((arrival - event.recorded_at.timestamp()) * 1000)
    return {
        "live_events": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=Config().outbox_concurrency)
    parser.add_argument("--live-rate", type=float, default=200.0)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        serve_receiver()
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-receiver"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        base = f"http://127.0.0.1:{child.stdout.readline().strip()}"
        with tempfile.TemporaryDirectory() as directory:
            result = asyncio.run(bench(args, base, directory))
    finally:
        child.terminate()
        child.wait()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"seeded {args.contacts:,} Contacts in {result['seeded_s']:.1f} s,"
        f" projected in {result['projected_s']:.1f} s"
    )
    print(
        f"backlog: {args.contacts:,} deliveries in {result['backlog_s']:.2f} s ="
        f" {result['backlog_rate']:,.0f} deliveries/s (concurrency {args.concurrency})"
    )
    if "p50_ms" in result:
        print(
            f"live at {args.live_rate:g}/s: {result['live_events']:,} events,"
            f" event-to-delivery p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
        )
    expected = args.contacts + result.get("live_events", 0)
    print(
        f"receiver: {result['unique']:,} event ids (expected {expected:,}),"
        f" {result['raw'] - result['unique']} raw duplicates"
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
