"""Append throughput of the SQLite event store, next to what SQLite itself can do.

Run from the repository root::

    python bench/append.py                      # full run: 1,000,000 events in (b)
    python bench/append.py --events 200000 --seconds 2

(a) Single-event appends per second from 1, 64 and 512 concurrent asyncio tasks, each on
    its own stream with an exact expected version, through ``SQLiteEventStore``; next to a
    *bare* group-commit writer written here (a list of pending rows + futures, one writer
    task, ``BEGIN; executemany INSERT; COMMIT`` as one call on one dedicated thread, no
    checks, no hashing) inserting the same columns into a table of the store's schema.
(b) ``--events`` events appended in batches of 1,000 (one append = one new stream,
    expected version NO_STREAM) through the store; next to a raw ``sqlite3`` executemany of
    the same rows, 1,000 per transaction, into (i) a table with exactly the store's schema
    and (ii) a plain table with the same columns and no secondary index.

Every database is a fresh file in WAL mode with ``synchronous=FULL`` (the store's default
durability). Only stdlib, orjson, aiosqlite and the project are used.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

# Make "python bench/append.py" work from the repository root without installing.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventstore.base import NO_STREAM, NewEvent, new_event_id
from eventstore.chain import encode_json

TARGET_A_RATE = 50_000.0
TARGET_A_RATIO = 0.5
TARGET_B_RATIO = 0.3
BATCH = 1_000
EVENT_TYPE = "PostbackReceived"

# The store's schema as documented; replaced by the real one read from a database the
# store created (tables and indexes), so "same schema" means exactly the same.
DOCUMENTED_SCHEMA: list[str] = [
    "CREATE TABLE streams (stream_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE events (position INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL, "
    "version INTEGER NOT NULL, event_id BLOB NOT NULL UNIQUE, type TEXT NOT NULL, "
    "schema_version INTEGER NOT NULL, data BLOB NOT NULL, metadata BLOB NOT NULL, "
    "recorded_us INTEGER NOT NULL, hash BLOB NOT NULL, UNIQUE(stream_id, version))",
]
PLAIN_SCHEMA: list[str] = [
    "CREATE TABLE events (position INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL, "
    "version INTEGER NOT NULL, event_id BLOB NOT NULL, type TEXT NOT NULL, "
    "schema_version INTEGER NOT NULL, data BLOB NOT NULL, metadata BLOB NOT NULL, "
    "recorded_us INTEGER NOT NULL, hash BLOB NOT NULL)",
]
INSERT_EVENT = (
    "INSERT INTO events (position, stream_id, version, event_id, type, schema_version, "
    "data, metadata, recorded_us, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

Row = tuple[int, int, int, bytes, str, int, bytes, bytes, int, bytes]


# --------------------------------------------------------------------------- payloads


def postback(task: int, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Data and metadata shaped like a partner's conversion postback."""
    clickid = f"c{task:05d}x{n:09d}a7f3e9"
    data = {"goal": "dep", "sum": "100.50", "clickid": clickid, "subscriber": n}
    metadata = {
        "request": {
            "ip": "203.0.113.7",
            "query": f"clickid={clickid}&goal=dep&sum=100.50",
        }
    }
    return data, metadata


# --------------------------------------------------------------------------- helpers


def connect(path: Path, schema: Sequence[str] | None) -> sqlite3.Connection:
    """A plain connection in WAL + synchronous=FULL, autocommit (explicit BEGIN/COMMIT),
    checkpointing the WAL as often as the store's writer does (so that only the code
    differs between the store and the raw writers, not the file's settings)."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"could not switch {path} to WAL (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint={store_wal_autocheckpoint()}")
    if schema:
        conn.execute("BEGIN")
        for statement in schema:
            conn.execute(statement)
        conn.execute("COMMIT")
    return conn


def fresh(directory: Path, name: str) -> Path:
    path = directory / name
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quiet_gc() -> None:
    """Collect, then move every surviving object out of the collector's reach.

    Prepared payloads (up to millions of objects) would otherwise be rescanned by every
    full collection during the timed part and bill the code under test for them.
    """
    gc.collect()
    gc.freeze()


def unfreeze_gc() -> None:
    gc.unfreeze()
    gc.collect()


# --------------------------------------------------------------------------- store access


def store_class() -> Any:
    from eventstore.sqlite import SQLiteEventStore

    return SQLiteEventStore


def store_wal_autocheckpoint() -> int:
    from eventstore.sqlite import WAL_AUTOCHECKPOINT_PAGES

    return WAL_AUTOCHECKPOINT_PAGES


def store_available() -> str | None:
    """None when the store imports, otherwise why not."""
    try:
        store_class()
    except Exception as exc:  # the backend may be missing or half-written
        return f"{type(exc).__name__}: {exc}"
    return None


async def read_store_schema(directory: Path) -> tuple[list[str], list[str]]:
    """The tables and indexes (SQL) of a database the store created; plus its triggers."""
    path = fresh(directory, "schema-probe.db")
    store = await store_class().open(path)
    await store.close()
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, "
            "rowid"
        ).fetchall()
    finally:
        conn.close()
    remove_db(path)
    schema = [sql for kind, sql in rows if kind in ("table", "index")]
    triggers = [sql for kind, sql in rows if kind == "trigger"]
    return schema, triggers


# --------------------------------------------------------------------------- (a) bare writer


class BareWriter:
    """The least a group-commit writer can do: no checks, no hashing, no streams table.

    Callers queue a row without a position and await a future; one writer task takes
    everything pending, assigns positions, and runs ``BEGIN; executemany; COMMIT`` as one
    call on a single dedicated thread, then resolves the futures.
    """

    def __init__(self, path: Path, schema: Sequence[str]) -> None:
        self._conn = connect(path, schema)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-writer")
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._position = 0
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.batches = 0

    async def append(
        self, stream_id: int, version: int, event_id: bytes, data: bytes, metadata: bytes
    ) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(((stream_id, version, event_id, data, metadata), future))
        self._wakeup.set()
        return await future

    def _write(self, rows: list[Row]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany(INSERT_EVENT, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        hash_placeholder = bytes(32)
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch, self._pending = self._pending, []
            recorded_us = time.time_ns() // 1000
            first = self._position + 1
            rows: list[Row] = [
                (first + i, s, v, eid, EVENT_TYPE, 1, d, m, recorded_us, hash_placeholder)
                for i, ((s, v, eid, d, m), _) in enumerate(batch)
            ]
            try:
                await loop.run_in_executor(self._executor, self._write, rows)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._position += len(rows)
            self.batches += 1
            for i, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(first + i)

    async def close(self) -> int:
        """Finish pending appends, close; return the number of rows in the table."""
        self._closing = True
        self._wakeup.set()
        await self._task
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self._executor, self._count_and_close)
        self._executor.shutdown()
        return stored

    def _count_and_close(self) -> int:
        stored = int(self._conn.execute("SELECT count(*) FROM events").fetchone()[0])
        self._conn.close()
        return stored


# --------------------------------------------------------------------------- (a) runs


@dataclass
class LevelResult:
    tasks: int
    appends: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    batches: int | None = None

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    def latency_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def drive(
    tasks: int, seconds: float, one_task: Callable[[int, float, list[float]], Awaitable[int]]
) -> LevelResult:
    """Run ``tasks`` copies of ``one_task`` until the deadline; count finished appends."""
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    counts = await asyncio.gather(*(one_task(t, deadline, latencies) for t in range(tasks)))
    elapsed = time.perf_counter() - start
    return LevelResult(tasks, sum(counts), elapsed, latencies)


async def run_store_level(directory: Path, tasks: int, seconds: float) -> LevelResult:
    path = fresh(directory, f"a-store-{tasks}.db")
    store = await store_class().open(path)
    perf_counter = time.perf_counter

    async def one_task(task: int, deadline: float, latencies: list[float]) -> int:
        stream = f"bench-{task}"
        version = 0
        while True:
            t0 = perf_counter()
            if t0 >= deadline:
                return version
            data, metadata = postback(task, version + 1)
            event = NewEvent(type=EVENT_TYPE, data=data, metadata=metadata)
            result = await store.append(stream, [event], version)
            version = result.stream_version
            latencies.append(perf_counter() - t0)

    try:
        result = await drive(tasks, seconds, one_task)
        last = await store.last_position()
    finally:
        await store.close()
    if last != result.appends:
        raise RuntimeError(f"store holds {last} events, the tasks counted {result.appends}")
    remove_db(path)
    return result


async def run_bare_level(
    directory: Path, schema: Sequence[str], tasks: int, seconds: float
) -> LevelResult:
    path = fresh(directory, f"a-bare-{tasks}.db")
    writer = BareWriter(path, schema)
    perf_counter = time.perf_counter

    async def one_task(task: int, deadline: float, latencies: list[float]) -> int:
        stream_id = task + 1
        version = 0
        while True:
            t0 = perf_counter()
            if t0 >= deadline:
                return version
            data, metadata = postback(task, version + 1)
            await writer.append(
                stream_id,
                version + 1,
                new_event_id().bytes,
                encode_json(data),
                encode_json(metadata),
            )
            version += 1
            latencies.append(perf_counter() - t0)

    try:
        result = await drive(tasks, seconds, one_task)
    finally:
        stored = await writer.close()
    if stored != result.appends:
        raise RuntimeError(f"bare table holds {stored} rows, the tasks counted {result.appends}")
    result.batches = writer.batches
    remove_db(path)
    return result


# --------------------------------------------------------------------------- (b) bulk


@dataclass
class BulkResult:
    name: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def batch_sizes(total: int) -> list[int]:
    sizes = [BATCH] * (total // BATCH)
    if total % BATCH:
        sizes.append(total % BATCH)
    return sizes


def prepare_new_events(total: int) -> list[tuple[str, list[NewEvent]]]:
    batches: list[tuple[str, list[NewEvent]]] = []
    for b, size in enumerate(batch_sizes(total)):
        events = []
        for v in range(1, size + 1):
            data, metadata = postback(b, v)
            events.append(NewEvent(type=EVENT_TYPE, data=data, metadata=metadata))
        batches.append((f"load-{b}", events))
    return batches


def prepare_rows(total: int) -> list[list[Row]]:
    batches: list[list[Row]] = []
    position = 0
    for b, size in enumerate(batch_sizes(total)):
        recorded_us = time.time_ns() // 1000
        rows: list[Row] = []
        for v in range(1, size + 1):
            position += 1
            data, metadata = postback(b, v)
            rows.append(
                (
                    position,
                    b + 1,
                    v,
                    new_event_id().bytes,
                    EVENT_TYPE,
                    1,
                    encode_json(data),
                    encode_json(metadata),
                    recorded_us,
                    os.urandom(32),
                )
            )
        batches.append(rows)
    return batches


async def run_store_bulk(directory: Path, total: int) -> BulkResult:
    log(f"(b) preparing {total:,} NewEvent objects ...")
    batches = prepare_new_events(total)
    path = fresh(directory, "b-store.db")
    store = await store_class().open(path)
    quiet_gc()
    try:
        log("(b) store: appending ...")
        start = time.perf_counter()
        for stream, events in batches:
            await store.append(stream, events, NO_STREAM)
        elapsed = time.perf_counter() - start
        last = await store.last_position()
    finally:
        await store.close()
        unfreeze_gc()
    if last != total:
        raise RuntimeError(f"store holds {last} events, expected {total}")
    size = db_size(path)
    remove_db(path)
    log(f"(b) store: {elapsed:.2f} s, database {size / 1e6:.0f} MB")
    return BulkResult("store.append (1,000/append)", total, elapsed)


def db_size(path: Path) -> int:
    return sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )


def run_raw_bulk(
    directory: Path, name: str, label: str, schema: Sequence[str], batches: list[list[Row]]
) -> BulkResult:
    path = fresh(directory, name)
    conn = connect(path, schema)
    total = sum(len(rows) for rows in batches)
    try:
        log(f"(b) {label}: inserting ...")
        start = time.perf_counter()
        for rows in batches:
            conn.execute("BEGIN")
            conn.executemany(INSERT_EVENT, rows)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    if stored != total:
        raise RuntimeError(f"{label}: {stored} rows stored, expected {total}")
    size = db_size(path)
    remove_db(path)
    log(f"(b) {label}: {elapsed:.2f} s, database {size / 1e6:.0f} MB")
    return BulkResult(label, total, elapsed)


# --------------------------------------------------------------------------- machine facts


def fsync_latency_ms(directory: Path, rounds: int = 50) -> float:
    """Median time of write(4 KiB) + fsync on the benchmark's file system."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    samples = []
    try:
        block = b"x" * 4096
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(samples) * 1000


def machine_facts(directory: Path) -> list[tuple[str, str]]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return [
        ("nproc", f"{usable} (os.cpu_count {os.cpu_count()})"),
        ("python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("sqlite", f"{sqlite3.sqlite_version} (aiosqlite {aiosqlite.__version__})"),
        ("platform", platform.platform()),
        ("database dir", str(directory)),
        ("fsync (4 KiB)", f"{fsync_latency_ms(directory):.2f} ms median"),
    ]


# --------------------------------------------------------------------------- main


@dataclass
class Options:
    seconds: float
    events: int
    levels: list[int]
    directory: Path | None


async def bench(options: Options, directory: Path) -> int:
    facts = machine_facts(directory)
    missing = store_available()
    if missing is not None:
        log(f"eventstore.sqlite is not usable ({missing}): measuring SQLite alone")
        schema, triggers = DOCUMENTED_SCHEMA, list[str]()
        schema_source = "documented (store not importable)"
    else:
        schema, triggers = await read_store_schema(directory)
        schema_source = "read from a database the store created"

    # (a) -------------------------------------------------------------------------------
    a_rows: list[tuple[int, LevelResult | None, LevelResult]] = []
    for tasks in options.levels:
        store_result: LevelResult | None = None
        if missing is None:
            log(f"(a) store, {tasks} tasks, {options.seconds:g} s ...")
            store_result = await run_store_level(directory, tasks, options.seconds)
            log(f"    {fmt_rate(store_result.rate)} appends/s")
        log(f"(a) bare writer, {tasks} tasks, {options.seconds:g} s ...")
        bare_result = await run_bare_level(directory, schema, tasks, options.seconds)
        log(f"    {fmt_rate(bare_result.rate)} appends/s in {bare_result.batches} batches")
        a_rows.append((tasks, store_result, bare_result))

    # (b) -------------------------------------------------------------------------------
    b_store: BulkResult | None = None
    if missing is None:
        b_store = await run_store_bulk(directory, options.events)
    log(f"(b) preparing {options.events:,} raw rows ...")
    rows = prepare_rows(options.events)
    quiet_gc()
    try:
        b_same = run_raw_bulk(directory, "b-raw-same.db", "raw, store schema", schema, rows)
        b_plain = run_raw_bulk(directory, "b-raw-plain.db", "raw, plain table", PLAIN_SCHEMA, rows)
    finally:
        del rows
        unfreeze_gc()

    # report ----------------------------------------------------------------------------
    out: list[str] = []
    out.append("")
    out.append("Machine")
    for key, value in facts:
        out.append(f"  {key:<14} {value}")
    out.append("  durability     WAL + synchronous=FULL everywhere; fresh database file per run")
    out.append(f"  schema         {schema_source}")
    out.append(
        f"  checkpoints    WAL checkpointed every {store_wal_autocheckpoint():,} pages"
        " (the store's setting, for every writer)"
    )
    if triggers:
        out.append(f"  note           the store has {len(triggers)} trigger(s); raw runs omit them")

    out.append("")
    out.append(
        f"(a) single-event appends/s, {options.seconds:g} s per run, "
        "one stream per task, exact expected version"
    )
    header = (
        f"  {'tasks':>5}  {'store/s':>10}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'bare/s':>10}  {'p50 ms':>7}  {'p99 ms':>7}  {'avg batch':>9}  "
        f"{'store/bare':>10}  target"
    )
    out.append(header)
    out.append("  " + "-" * (len(header) - 2))
    worst_ok = True
    for tasks, store_result, bare_result in a_rows:
        if store_result is not None:
            ratio = store_result.rate / bare_result.rate
            store_cols = (
                f"{fmt_rate(store_result.rate):>10}  {store_result.latency_ms(0.5):>7.2f}  "
                f"{store_result.latency_ms(0.99):>7.2f}"
            )
            ratio_col = f"{ratio:>10.2f}"
            if tasks == 512:
                rate_met = store_result.rate >= TARGET_A_RATE
                ratio_met = ratio >= TARGET_A_RATIO
                worst_ok = worst_ok and rate_met and ratio_met
                target = (
                    f"rate >= {fmt_rate(TARGET_A_RATE)}: {ok(rate_met)}, "
                    f"ratio >= {TARGET_A_RATIO}: {ok(ratio_met)}"
                )
            else:
                target = f"ratio >= {TARGET_A_RATIO}: {ok(ratio >= TARGET_A_RATIO)}"
        else:
            store_cols = f"{'n/a':>10}  {'':>7}  {'':>7}"
            ratio_col = f"{'n/a':>10}"
            target = ""
        out.append(
            f"  {tasks:>5}  {store_cols}  {fmt_rate(bare_result.rate):>10}  "
            f"{bare_result.latency_ms(0.5):>7.2f}  {bare_result.latency_ms(0.99):>7.2f}  "
            f"{bare_result.appends / max(1, bare_result.batches or 0):>9.1f}  "
            f"{ratio_col}  {target}"
        )

    out.append("")
    out.append(
        f"(b) {options.events:,} events in batches of {BATCH:,} "
        "(one append / one transaction each), rows/s"
    )
    out.append(f"  {'writer':<30}  {'seconds':>8}  {'rows/s':>10}  store/x  target")
    out.append("  " + "-" * 70)
    results = ([b_store] if b_store is not None else []) + [b_same, b_plain]
    for result in results:
        if b_store is None or result is b_store:
            ratio_text, target = f"{'':>7}", ""
        else:
            ratio = b_store.rate / result.rate
            ratio_text = f"{ratio:>7.2f}"
            met = ratio >= TARGET_B_RATIO
            worst_ok = worst_ok and met
            target = f">= {TARGET_B_RATIO}: {ok(met)}"
        out.append(
            f"  {result.name:<30}  {result.seconds:>8.2f}  {fmt_rate(result.rate):>10}  "
            f"{ratio_text}  {target}"
        )
    out.append("")
    if missing is not None:
        out.append(f"store not measured: {missing}")
    else:
        out.append("targets: " + ("all met" if worst_ok else "some MISSED (see above)"))
    print("\n".join(line.rstrip() for line in out), flush=True)
    return 0


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("levels are positive integers, e.g. 1,64,512")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="duration of each (a) run (default 3)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        help="events appended in (b), in batches of 1,000 (default 1,000,000)",
    )
    parser.add_argument(
        "--levels",
        type=parse_levels,
        default=[1, 64, 512],
        help="comma-separated concurrency levels for (a) (default 1,64,512)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="directory for the database files (default: a fresh temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.seconds <= 0:
        parser.error("--events and --seconds must be positive")
    options = Options(args.seconds, args.events, args.levels, args.dir)

    if options.directory is not None:
        options.directory.mkdir(parents=True, exist_ok=True)
        return asyncio.run(bench(options, options.directory))
    directory = Path(tempfile.mkdtemp(prefix="bench-append-"))
    try:
        return asyncio.run(bench(options, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
