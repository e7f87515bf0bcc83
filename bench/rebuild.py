"""Rebuild throughput of every projection, next to a bare scan-and-fold of the same log.

Run from the repository root::

    python bench/rebuild.py                     # full run: 1,000,000 events
    python bench/rebuild.py --events 100000     # scaled down (subscribers scale with it)
    python bench/rebuild.py --events 200000 --dsn postgresql://postgres@127.0.0.1/test
    python bench/rebuild.py --dir /tmp/rb --reuse-log --repeat 3   # the log of an earlier run

1. Generates ``--events`` realistic events (docs/events.md) into a fresh SQLite log through
   ``SQLiteEventStore.append`` in big concurrent batches: a few accounts, spots and goals,
   ``--events / 10`` subscribers (``SubscriberCreated``), and per subscriber the partner
   requests a tracker sends: ``ContactRecorded``, ``GoalReached`` (reg, dep with
   ``PlayerIdAssigned`` in the same request, redep, rebill, custom goals, with amounts) and
   some ``PostbackRejected``; every request's events carry ``metadata.postback``.
2. In a child process (so its peak RSS is its own): ``postback rebuild --db <log>``, the
   operator's command (a full rebuild of ``projections.catalog.all_projections()`` into a
   fresh projections file beside the log; ``--jobs``, one per core by default, shadow
   processes), timed from outside; events/s and peak RSS (the command's, and at most
   that of its shadow processes).
3. In another child process: a bare loop over the same ``events`` table with ``sqlite3``
   that ``orjson``-decodes each event's data and folds it into in-memory counters.
4. With ``--dsn postgresql://...``: the log copied into a fresh schema of that database
   (``postback migrate-to --no-projections``), then ``postback rebuild --dsn`` there, in
   place (``--jobs 1``) and with ``--jobs`` shadow schemas; the schema is dropped after.

With ``--repeat N``, phases 2 and 3 alternate N times (this machine's speed drifts within
minutes, so one pair says little) and the medians are compared. Prints both rates, their
ratio and the targets (200,000 events/s, ratio >= 0.15, peak RSS
under 300 MB). Only stdlib, orjson, asyncpg (for ``--dsn``) and the project are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

# Make "python bench/rebuild.py" work from the repository root without installing.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventstore.base import NewEvent
from eventstore.sqlite import SQLiteEventStore
from postback.backend import with_search_path
from postback.cli import main as cli_main
from postback.cli_rebuild import DEFAULT_BATCH_SIZE, default_jobs
from postback.runtime import tune_process
from projections.catalog import all_projections
from projections.shadow import plan_shards

TARGET_RATE = 200_000.0
TARGET_RATIO = 0.15
TARGET_RSS_MB = 300.0
ACCOUNTS = 3
SPOTS = 8
CUSTOM_GOALS = ("level10", "kyc_submit", "vip")
CHUNK = 1_000
"""Subscribers created per append to the ``subscribers`` stream."""


# -- generating the log ------------------------------------------------------------------


def _postback_meta(
    rng: random.Random, spot_token: str, clickid: str, goal: str | None, status: int
) -> dict[str, Any]:
    query = f"clickid={clickid}" + (f"&goal={goal}" if goal else "")
    return {
        "postback": {
            "request_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "endpoint": "postback" if goal else "chat",
            "method": "GET",
            "path": "/postback/" if goal else "/spot/postback/chat/",
            "query": query,
            "body": "",
            "ip": f"203.0.113.{rng.randrange(1, 255)}",
            "received_at": "2026-11-24T12:00:00.123456+00:00",
            "clickid": clickid,
            "user_id": None,
            "spot": spot_token,
            "goal": goal,
            "txid": None,
            "status": status,
            "response": {"success": status == 200},
        }
    }


class Generator:
    """Builds the events of one subscriber at a time, deterministic for a seed."""

    def __init__(self, seed: int, spots: Sequence[tuple[int, int, str]]) -> None:
        self.rng = random.Random(seed)
        self.spots = spots  # (spot_id, account_id, token)

    def created(self, subscriber_id: int) -> tuple[NewEvent, tuple[int, int, str], str]:
        spot = self.spots[subscriber_id % len(self.spots)]
        clickid = f"C{subscriber_id:08d}"
        event = NewEvent(
            "SubscriberCreated",
            {
                "subscriber_id": subscriber_id,
                "account_id": spot[1],
                "spot_id": spot[0],
                "spot_token": spot[2],
                "user_id": str(7_000_000_000 + subscriber_id),
                "clickid": clickid,
                "fbclid": None,
                "fbp": None,
            },
        )
        return event, spot, clickid

    def activity(
        self, subscriber_id: int, spot: tuple[int, int, str], clickid: str, budget: int
    ) -> tuple[list[NewEvent], list[NewEvent]]:
        """``budget`` events: the subscriber's own stream, and rejections for the log."""
        rng = self.rng
        spot_id, account_id, token = spot
        base = {"subscriber_id": subscriber_id, "account_id": account_id}
        own: list[NewEvent] = []
        rejected: list[NewEvent] = []

        def goal(name: str, amount: str | None, meta: dict[str, Any]) -> NewEvent:
            data = {
                **base,
                "spot_id": spot_id,
                "goal": name,
                "standard": name in ("reg", "dep", "redep", "rebill"),
                "amount": amount,
                "txid": None,
            }
            return NewEvent("GoalReached", data, meta)

        if budget >= 2 and rng.random() < 0.6:
            meta = _postback_meta(rng, token, clickid, None, 200)
            own.append(
                NewEvent(
                    "ContactRecorded",
                    {**base, "spot_id": spot_id, "user_id": str(7_000_000_000 + subscriber_id)},
                    meta,
                )
            )
        own.append(goal("reg", None, _postback_meta(rng, token, clickid, "reg", 200)))
        deposited = False
        while len(own) + len(rejected) < budget:
            roll = rng.random()
            amount = f"{rng.randrange(1, 50_000)}.{rng.randrange(100):02d}"
            if not deposited and len(own) + len(rejected) + 2 <= budget:
                meta = _postback_meta(rng, token, clickid, "dep", 200)
                player = {**base, "player_id": f"P-{subscriber_id}", "previous": None}
                own.append(NewEvent("PlayerIdAssigned", player, meta))
                own.append(goal("dep", amount, meta))
                deposited = True
            elif roll < 0.08:
                meta = _postback_meta(rng, token, clickid, "dep", 409)
                data = {"account_id": account_id, "status": 409, "code": "deposit_already"}
                rejected.append(NewEvent("PostbackRejected", {**data, "error": "dep"}, meta))
            elif roll < 0.2:
                name = CUSTOM_GOALS[rng.randrange(len(CUSTOM_GOALS))]
                own.append(goal(name, None, _postback_meta(rng, token, clickid, name, 200)))
            elif roll < 0.35:
                own.append(
                    goal("rebill", amount, _postback_meta(rng, token, clickid, "rebill", 200))
                )
            else:
                own.append(goal("redep", amount, _postback_meta(rng, token, clickid, "redep", 200)))
        return own, rejected


async def generate(path: Path, events: int, subscribers: int, seed: int) -> int:
    store = await SQLiteEventStore.open(path, durability="normal", poll_interval=None)
    try:
        written = 0
        for account_id in range(1, ACCOUNTS + 1):
            data = {"account_id": account_id, "name": f"Account {account_id}", "api_key_sha256": ""}
            await store.append("accounts", [NewEvent("AccountCreated", data)])
            for name in CUSTOM_GOALS:
                goal = {"account_id": account_id, "name": name, "profile": None, "notify": None}
                await store.append(f"goals-{account_id}", [NewEvent("GoalDefined", goal)])
            written += 1 + len(CUSTOM_GOALS)
        spots: list[tuple[int, int, str]] = []
        for spot_id in range(1, SPOTS + 1):
            account_id = (spot_id - 1) % ACCOUNTS + 1
            token = f"spot-{spot_id:04d}"
            data = {"spot_id": spot_id, "account_id": account_id, "title": f"bot {spot_id}"}
            await store.append("spots", [NewEvent("SpotCreated", {**data, "token": token})])
            spots.append((spot_id, account_id, token))
            written += 1
        generator = Generator(seed, spots)
        remaining_activity = events - written - subscribers
        if remaining_activity < subscribers:
            raise SystemExit("--events must be at least about twice --subscribers")
        per_subscriber, extra = divmod(remaining_activity, subscribers)
        rng = random.Random(seed + 1)
        for first in range(1, subscribers + 1, CHUNK):
            ids = range(first, min(first + CHUNK, subscribers + 1))
            created = [generator.created(i) for i in ids]
            await store.append("subscribers", [event for event, _, _ in created])
            appends = []
            rejected: list[NewEvent] = []
            delta = 0
            for subscriber_id, (_, spot, clickid) in zip(ids, created, strict=True):
                # Budgets vary around the mean, in pairs (+d, -d), so they add up exactly.
                budget = per_subscriber + (1 if subscriber_id <= extra else 0)
                if subscriber_id % 2 and subscriber_id < subscribers:
                    spread = max(0, min(3, per_subscriber - 2))
                    delta = rng.randint(-spread, spread)
                    budget += delta
                elif subscriber_id % 2 == 0:
                    budget -= delta
                own, refused = generator.activity(subscriber_id, spot, clickid, budget)
                appends.append(store.append(f"subscriber-{subscriber_id}", own))
                rejected.extend(refused)
            if rejected:
                appends.append(store.append("postback-log", rejected))
            await asyncio.gather(*appends)
            written += len(created)
        return await store.last_position()
    finally:
        await store.close()


# -- the measured phases (each in a child process) ------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux: ``VmHWM``, which starts afresh at ``exec`` (the
    ``ru_maxrss`` of ``getrusage`` carries over the peak of the parent that forked us,
    here the generator's); elsewhere ``ru_maxrss``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _events_in(db: Path) -> int | None:
    """The events of the log ``db``; None if there is no such file or no log in it."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    except sqlite3.Error:
        return None
    return int(count)


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _rebuild(db: Path, batch_size: int, jobs: int, dsn: str | None = None) -> dict[str, Any]:
    """``postback rebuild`` as an operator runs it (the command's process settings, its
    progress bar on stderr), timed from the outside: opening the log included.

    Memory: this process's peak, and the largest peak of its shadow children
    (``RUSAGE_CHILDREN``: an upper bound, as a child's ``ru_maxrss`` starts from what its
    parent had when it forked); the command's total is at most the first plus ``jobs``
    times the second."""
    if dsn is None:
        _remove_db(db.with_name("bench.projections.db"))  # the command's default place
    tune_process()
    log = ["--db", str(db)] if dsn is None else ["--dsn", dsn]  # dsn: a copy of db's log
    argv = ["rebuild", *log, "--batch-size", str(batch_size), "--jobs", str(jobs)]
    started = time.perf_counter()
    if cli_main(argv) != 0:
        raise SystemExit(f"postback {' '.join(argv)} failed")
    seconds = time.perf_counter() - started
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (position,) = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
    return {
        "events": position,
        "seconds": seconds,
        "rate": position / seconds,
        "rss_mb": _peak_rss_mb(),
        "child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "processes": len(plan_shards(all_projections(), jobs)) if jobs > 1 else 0,
        "projections": [p.name for p in all_projections()],
    }


def _bare(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    by_type: Counter[str] = Counter()
    goals: Counter[tuple[int, int, str]] = Counter()
    started = time.perf_counter()
    cursor = conn.execute("SELECT type, data FROM events ORDER BY position")
    count = 0
    while rows := cursor.fetchmany(10_000):
        for event_type, raw in rows:
            data = orjson.loads(raw)
            by_type[event_type] += 1
            if event_type == "GoalReached":
                goals[data["account_id"], data["spot_id"], data["goal"]] += 1
        count += len(rows)
    seconds = time.perf_counter() - started
    conn.close()
    return {"events": count, "seconds": seconds, "rate": count / seconds, "rss_mb": _peak_rss_mb()}


def _child(
    phase: str, db: Path, batch_size: int, jobs: int, dsn: str | None = None
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--phase", phase, "--db", str(db)]
    command += ["--batch-size", str(batch_size), "--jobs", str(jobs)]
    if dsn is not None:
        command += ["--dsn", dsn]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _on_postgres(dsn: str, db: Path, batch_size: int, jobs: int) -> None:
    """The log of ``db`` copied into a fresh schema of ``dsn``, rebuilt there in place and
    in ``jobs`` shadow schemas (each in a child process), the schema dropped after."""
    schema = f"bench_rebuild_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_execute(dsn, f'CREATE SCHEMA "{schema}"'))
    try:
        target = with_search_path(dsn, schema)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # migrate-to's report
            migrate = ["migrate-to", "--dsn", target, "--db", str(db), "--no-projections"]
            if cli_main(migrate) != 0:
                raise SystemExit("postback migrate-to failed")
        copied = time.perf_counter() - started
        print(f"PostgreSQL: the log copied into schema {schema} in {copied:.1f} s")
        runs = [("in place, --jobs 1", 1)]
        if jobs > 1:
            runs.append((f"{jobs} shadow schemas, --jobs {jobs}", jobs))
        for label, chosen in runs:
            result = _child("rebuild", db, batch_size, chosen, target)
            print(
                f"rebuild on PostgreSQL ({label}): {result['events']:,} events in"
                f" {result['seconds']:.2f} s = {result['rate']:,.0f} events/s"
            )
    finally:
        asyncio.run(_pg_execute(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def _pg_execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--subscribers", type=int, help="default: --events / 10")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="the command's --batch-size (its default unless told)",
    )
    parser.add_argument(
        "--jobs", type=int, default=default_jobs(), help="the command's --jobs (1: in place)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="keep the databases here (default: a temporary dir)")
    parser.add_argument(
        "--dsn", help="also rebuild on this PostgreSQL database, in a fresh schema (dropped after)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="bare loop and rebuild this many times, alternately (a noisy machine's speed"
        " drifts within minutes); the medians and their ratio are the figures",
    )
    parser.add_argument(
        "--reuse-log",
        action="store_true",
        help="with --dir: keep a bench.db there that holds --events events (generated by an"
        " earlier run with the same --events, --subscribers and --seed) instead of a new one",
    )
    parser.add_argument("--phase", choices=("rebuild", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.reuse_log and not args.dir:
        parser.error("--reuse-log needs --dir")

    if args.phase is not None:
        db = Path(args.db)
        if args.phase == "rebuild":
            result = _rebuild(db, args.batch_size, args.jobs, args.dsn)
        else:
            result = _bare(db)
        print(json.dumps(result))
        return 0

    subscribers = args.subscribers or max(1, args.events // 10)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "bench.db"
    reuse = args.reuse_log and _events_in(db) == args.events
    if not reuse:
        _remove_db(db)
    try:
        print(
            f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{os.cpu_count()} CPUs, {platform.machine()}"
        )
        if reuse:
            print(f"reusing the log {db} ({args.events:,} events)")
        else:
            started = time.perf_counter()
            total = asyncio.run(generate(db, args.events, subscribers, args.seed))
            seconds = time.perf_counter() - started
            size_mb = db.stat().st_size / 1e6
            print(
                f"generated {total:,} events ({subscribers:,} subscribers) in {seconds:.1f} s "
                f"({total / seconds:,.0f} events/s); log {size_mb:,.0f} MB"
            )
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            mix = conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY 2 DESC")
            print("  " + ", ".join(f"{kind} {count:,}" for kind, count in mix))

        bares: list[dict[str, Any]] = []
        rebuilds: list[dict[str, Any]] = []
        for _ in range(args.repeat):
            bare = _child("bare", db, args.batch_size, args.jobs)
            rebuild = _child("rebuild", db, args.batch_size, args.jobs)
            bares.append(bare)
            rebuilds.append(rebuild)
            print(
                f"bare loop (sqlite3 scan + orjson decode + fold): {bare['events']:,} events "
                f"in {bare['seconds']:.2f} s = {bare['rate']:,.0f} events/s"
            )
            print(
                f"rebuild of {', '.join(rebuild['projections'])} (batch {args.batch_size}): "
                f"{rebuild['events']:,} events in {rebuild['seconds']:.2f} s = "
                f"{rebuild['rate']:,.0f} events/s; ratio {rebuild['rate'] / bare['rate']:.3f}"
            )
        bare_rate = statistics.median(run["rate"] for run in bares)
        rebuild_rate = statistics.median(run["rate"] for run in rebuilds)
        children = rebuilds[0]["processes"]
        rss = max(run["rss_mb"] for run in rebuilds)
        child_rss = max(run["child_rss_mb"] for run in rebuilds)
        rss_mb = rss + children * child_rss
        memory = f"peak RSS {rss:.0f} MB"
        if children:
            memory += (
                f" + {children} shadow processes of at most {child_rss:.0f} MB"
                f" each = at most {rss_mb:.0f} MB"
            )
        ratio = rebuild_rate / bare_rate
        if args.repeat > 1:
            ratios = [r["rate"] / b["rate"] for r, b in zip(rebuilds, bares, strict=True)]
            print(
                f"medians of {args.repeat} alternate runs: bare {bare_rate:,.0f} events/s,"
                f" rebuild {rebuild_rate:,.0f} events/s (ratios of the pairs"
                f" {min(ratios):.3f} to {max(ratios):.3f})"
            )
        print(f"rebuild {memory}")
        checks = [
            (f"rebuild rate >= {TARGET_RATE:,.0f} events/s", rebuild_rate >= TARGET_RATE),
            (f"ratio rebuild/bare = {ratio:.3f} >= {TARGET_RATIO}", ratio >= TARGET_RATIO),
            (f"peak RSS {rss_mb:.0f} MB < {TARGET_RSS_MB:.0f} MB", rss_mb < TARGET_RSS_MB),
        ]
        for label, ok in checks:
            print(f"  {'met   ' if ok else 'MISSED'} {label}")
        if args.dsn:
            _on_postgres(args.dsn, db, args.batch_size, args.jobs)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
