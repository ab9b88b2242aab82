"""The ingest role (issue 13): initial copy, source commit -> device, and write-back.

Strategy: the parts a worker runs, on real servers: a source CRM database with logical
decoding and the org's staging database in one embedded PostgreSQL, the daemon in this
process, and ``syncd.ingest.sync.OrgSync`` (what a ``syncd-ingest worker`` job runs) over the
real PostgreSQL source and admin socket. The procrastinate queue around it is left out: it
schedules passes, it does not move rows.

* initial copy: ``OrgSync.copy`` of N source rows into a fresh org's staging (keyset pages,
  one staging transaction per page, triggers stamping versions), each repeat beside the
  ceiling: the same rows by binary ``COPY`` out of the source and ``COPY`` into a plain table
  of the same staging database (no triggers, no change log);
* live: a wire device caught up and connected; single-row UPDATEs committed at the source at
  a steady rate while a loop runs ``stream_once`` every ``poll_seconds`` (the worker's
  default, 0.2 s, which bounds the figure from below by about half of it on average);
  latency from the source COMMIT returning to the device decoding the row;
* write-back: an SDK device edits M rows and uploads them; ops/s of ``writeback_once``
  draining syncd's outbox into the source (UPDATEs with the before-image check), alone.

    python -m bench.ingest [--rows 20000] [--rounds 3] [--rate 20] [--seconds 5]
        [--writeback-ops 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
import uvloop

from protocol import Changes
from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.ctl import AdminClient
from syncd.ingest.postgres import PostgresSource
from syncd.ingest.queue import QueueSettings
from syncd.ingest.staging import ensure_state
from syncd.ingest.sync import OrgSync
from syncd.store import StagingStore
from syncd.store.sql import database_name
from syncd.store.staging import create_database

from . import progress, record
from .common import (
    Endpoint,
    PgServer,
    embedded_server,
    in_process_daemon,
    print_table,
    with_database,
)
from .latency import CELL_HEADERS, summarize
from .sync import WireDevice

SOURCE_DDL: Final = """
CREATE TABLE account (
    id uuid PRIMARY KEY, name text NOT NULL, owner_id integer NOT NULL,
    amount numeric(12, 2), modified_at timestamptz NOT NULL DEFAULT now())
"""
COLUMNS: Final = ("id", "name", "owner_id", "amount")
PROFILES: Final[dict[str, Any]] = {
    "entities": {"account": {"writable": ["name"]}},
    "profiles": {"all": {"offline": True, "entities": {"account": {}}}},
    "default_profile": "all",
}
LIVE_PREFIX: Final = "live "
#: The worker's own poll of the source (``syncd-ingest worker --poll-seconds``).
POLL_SECONDS: Final = QueueSettings().poll_seconds
#: How long a change may take to reach the device before it counts as lost.
GRACE_S: Final = 30.0


def _key(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


def source_rows(count: int) -> Iterator[tuple[Any, ...]]:
    for i in range(count):
        yield (_key(i), f"Account {i}", i % 50, Decimal(i % 100_000) / 100)


async def make_source(pg: PgServer, rows: int) -> str:
    """A fresh source database with ``rows`` accounts (loaded by COPY: setup, not measured)."""
    name = f"bench_src_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(pg.dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SOURCE_DDL)
        await conn.copy_records_to_table("account", records=source_rows(rows), columns=COLUMNS)
        await conn.execute("ANALYZE account")
    finally:
        await conn.close()
    return dsn


async def drop_source(pg: PgServer, dsn: str) -> None:
    name = dsn.split("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = $1 AND NOT active",
            name,
        )
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass
class Org:
    """One org's pipeline, and the source and admin client it was built on."""

    sync: OrgSync
    source: PostgresSource
    admin: AdminClient
    staging: StagingStore


@contextlib.asynccontextmanager
async def open_org(pg: PgServer, org: str, source_dsn: str) -> AsyncIterator[Org]:
    source = PostgresSource(source_dsn, org=org)
    admin = await AdminClient.open_unix(pg.base / "daemon" / "admin.sock")
    store = StagingStore(org, pg.dsn, database_name(org), max_size=2)
    try:
        sync = OrgSync(org, source=source, admin=admin, staging=store, profiles=PROFILES)
        yield Org(sync, source, admin, store)
    finally:
        await admin.close()
        await source.close()
        await store.close()


async def timed_copy(org: Org) -> float:
    """``OrgSync.provision``'s steps, the timer on the copy only (not on creating the
    staging database or the slot): rows/s."""
    await org.admin.call("org.add", {"name": org.sync.org})
    await org.sync.refresh_model()
    position = await org.source.start()
    async with (await org.staging.pool()).acquire() as conn:
        await ensure_state(conn)
    started = time.perf_counter()
    copied = await org.sync.copy(["account"], finish=position)
    return copied / (time.perf_counter() - started)


async def copy_ceiling(pg: PgServer, org: str, source_dsn: str, rows: int) -> float:
    """The same rows by COPY, source to a plain table of the org's staging database."""
    src = await asyncpg.connect(source_dsn)
    dst = await asyncpg.connect(with_database(pg.dsn, database_name(org)))
    try:
        await dst.execute(
            "CREATE TABLE IF NOT EXISTS _bench_copy (id uuid PRIMARY KEY, name text,"
            " owner_id integer, amount numeric(12, 2), modified_at timestamptz)"
        )
        await dst.execute("TRUNCATE _bench_copy")
        started = time.perf_counter()
        buffer = io.BytesIO()
        await src.copy_from_query("SELECT * FROM account", output=buffer, format="binary")
        buffer.seek(0)
        await dst.copy_to_table("_bench_copy", source=buffer, format="binary")
        elapsed = time.perf_counter() - started
        copied = await dst.fetchval("SELECT count(*) FROM _bench_copy")
        assert copied == rows, (copied, rows)
        return rows / elapsed
    finally:
        await src.close()
        await dst.close()


async def stream_forever(sync: OrgSync) -> None:
    while True:
        await sync.stream_once()
        await asyncio.sleep(POLL_SECONDS)


async def live_latency(
    endpoint: Endpoint, sync: OrgSync, source_dsn: str, rows: int, args: argparse.Namespace
) -> list[list[float]]:
    """Per round, ms from a source COMMIT returning to the wire device decoding the row."""
    device = WireDevice(endpoint, sync.org)
    await device.connect()
    with progress.bar("live device catching up", rows):
        await device.download()
    arrived: dict[int, float] = {}
    got = asyncio.Event()

    async def listen() -> None:
        while True:
            message = await device.next()
            if isinstance(message, Changes):
                now = time.perf_counter()
                for row in message.upserts:
                    for value in row:
                        if isinstance(value, str) and value.startswith(LIVE_PREFIX):
                            arrived[int(value[len(LIVE_PREFIX) :])] = now
                            got.set()

    per_round = int(args.rate * args.seconds)
    committed: dict[int, float] = {}
    conn = await asyncpg.connect(source_dsn)
    update = await conn.prepare("UPDATE account SET name = $1 WHERE id = $2")
    listener = asyncio.create_task(listen())
    streamer = asyncio.create_task(stream_forever(sync))
    try:
        # Warm up: one change through the whole path before the clock runs.
        await update.fetch(f"{LIVE_PREFIX}-1", _key(0))
        async with asyncio.timeout(GRACE_S):
            while -1 not in arrived:
                got.clear()
                await got.wait()
        rounds: list[list[float]] = []
        for r in range(args.rounds):
            first = r * per_round
            with progress.bar(f"live round {r + 1}/{args.rounds}: changes", per_round) as bar:
                start = time.perf_counter()
                for n in range(first, first + per_round):
                    await asyncio.sleep(
                        max(0.0, start + (n - first) / args.rate - time.perf_counter())
                    )
                    await update.fetch(f"{LIVE_PREFIX}{n}", _key(n % rows))
                    committed[n] = time.perf_counter()
                    bar.advance()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GRACE_S):
                    while not all(n in arrived for n in range(first, first + per_round)):
                        got.clear()
                        await got.wait()
            rounds.append(
                [
                    (arrived[n] - committed[n]) * 1000
                    for n in range(first, first + per_round)
                    if n in arrived
                ]
            )
        return rounds
    finally:
        for task in (listener, streamer):
            task.cancel()
        await asyncio.gather(listener, streamer, return_exceptions=True)
        await conn.close()
        await device.close()


async def writeback_rates(
    endpoint: Endpoint, sync: OrgSync, base: Path, args: argparse.Namespace
) -> list[float]:
    """ops/s of draining M uploaded edits into the source, per round."""
    db = LocalDB.open(base / "writeback-device.sqlite")
    client = SyncClient(
        db, host=endpoint.host, port=endpoint.port, ssl_context=endpoint.ssl_context(),
        token=endpoint.token(sync.org), org=sync.org, server_hostname="localhost",
    )  # fmt: skip
    rates: list[float] = []
    try:
        async with asyncio.timeout(300):
            await client.sync_once()
        keys = [row[0] for row in db.rows("account")]
        for r in range(args.rounds):
            chosen = keys[r * args.writeback_ops : (r + 1) * args.writeback_ops]
            for i, key in enumerate(chosen):
                db.update("account", key, {"name": f"edited on the device {r}.{i}"})
            async with asyncio.timeout(120):
                await client.sync_once()
            written = failed = 0
            started = time.perf_counter()
            async with asyncio.timeout(120):
                while written + failed < len(chosen):
                    w, f = await sync.writeback_once()
                    written, failed = written + w, failed + f
            rates.append(written / (time.perf_counter() - started))
            if failed:
                raise RuntimeError(f"{failed} write-backs failed in round {r + 1}")
    finally:
        db.close()
    return rates


async def run(pg: PgServer, args: argparse.Namespace) -> None:
    await create_database(pg.dsn, pg.control_db)
    source_dsn = await make_source(pg, args.rows)
    copy_rates: list[float] = []
    ceilings: list[float] = []
    try:
        async with in_process_daemon(pg) as endpoint:
            orgs = [f"ingest{r}-{uuid.uuid4().hex[:6]}" for r in range(args.rounds)]
            for r, org in enumerate(orgs):
                async with open_org(pg, org, source_dsn) as opened:
                    sync = opened.sync
                    with progress.bar(f"initial copy {r + 1}/{args.rounds}", args.rows):
                        copy_rates.append(await timed_copy(opened))
                    ceilings.append(await copy_ceiling(pg, org, source_dsn, args.rows))
                    if r < len(orgs) - 1:
                        await sync.deprovision()
                        continue
                    rounds = await live_latency(endpoint, sync, source_dsn, args.rows, args)
                    writeback = await writeback_rates(endpoint, sync, pg.base, args)
                    await sync.deprovision()
    finally:
        await drop_source(pg, source_dsn)
    _report(args, copy_rates, ceilings, rounds, writeback)


def _report(
    args: argparse.Namespace,
    copy_rates: Sequence[float],
    ceilings: Sequence[float],
    rounds: Sequence[Sequence[float]],
    writeback: Sequence[float],
) -> None:
    run = record.current()
    params = {"rows": args.rows}
    run.figure(
        "initial copy into staging", "rows/s", copy_rates, ceiling_samples=list(ceilings),
        ceiling_name="COPY of the same rows, source to staging", params=params,
        phase="initial copy",
    )  # fmt: skip
    print(f"\nInitial copy of {args.rows} source rows into staging")
    print_table(
        ["round", "OrgSync.copy rows/s", "COPY rows/s", "ratio"],
        [
            [i + 1, f"{a:.0f}", f"{b:.0f}", f"{a / b:.2f}"]
            for i, (a, b) in enumerate(zip(copy_rates, ceilings, strict=True))
        ],
    )
    each = [summarize(r) for r in rounds]
    whole = summarize([v for r in rounds for v in r])
    expected = int(args.rate * args.seconds) * args.rounds
    live = {"rate": args.rate, "changes": expected, "received": whole.count,
            "expected": expected, "poll_seconds": POLL_SECONDS}  # fmt: skip
    counted = [lat for lat in each if lat.count]
    for name, samples in (
        ("p50", [lat.p50 for lat in counted]),
        ("p99", [lat.p99 for lat in counted]),
    ):
        run.figure(
            f"source commit -> device received {name}, PostgreSQL source, 1 wire device",
            "ms", samples, higher_is_better=False,
            latency=whole, params=live, phase="live",
        )  # fmt: skip
    print(f"\nSource commit -> device received: {expected} single-row UPDATEs at {args.rate:g}/s")
    print_table(
        ["round", "received", *CELL_HEADERS],
        [[i + 1, lat.count, *lat.cells()] for i, lat in enumerate(each)]
        + [["all", whole.count, *whole.cells()]],
    )
    run.figure(
        "write-back to the source", "ops/s", writeback,
        params={"ops": args.writeback_ops}, phase="write-back",
    )  # fmt: skip
    print(f"\nWrite-back of {args.writeback_ops} device edits per round (UPDATE at the source)")
    print_table(["round", "ops/s"], [[i + 1, f"{v:.0f}"] for i, v in enumerate(writeback)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--rows", type=int, default=20_000, help="source rows (the issue's: 1000000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each figure")
    parser.add_argument("--rate", type=float, default=20.0, help="source commits per second, live")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="seconds of commits per live round"
    )
    parser.add_argument("--writeback-ops", type=int, default=400, help="device edits per round")
    args = parser.parse_args(argv)
    if args.rows < args.rounds * args.writeback_ops:
        parser.error(
            "--rows must be at least --rounds x --writeback-ops (each round edits new rows)"
        )
    with record.bench_run("ingest", argv), embedded_server() as pg:
        uvloop.run(run(pg, args))


if __name__ == "__main__":
    main()
