"""Bench the change feed against the raw asyncpg ceiling, in one run.

Loads a CRM-like entity with COPY, then times "changes since checkpoint" (initial sync with no
filter and with owner filters of 1, 10 and 100 owners, then an incremental window after
updating 10% of the rows) against one plain fetch of the same rows with the same columns, casts
and WHERE. Each case runs ``--rounds`` times, feed and ceiling alternating which goes first,
and reports medians: a 1,000-row case takes milliseconds, so one timing of it is mostly noise
on a shared 2-core machine. Ratios within one run are what to compare (ARCHITECTURE.md, ceilings).

    python -m bench.feed [--rows 1000000] [--rounds 3] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvloop

from bench import progress, record
from bench.common import DSN_ENV
from syncd.model import ClientModel
from syncd.store import (
    EmbeddedPostgres,
    OrgStores,
    RowFilter,
    Snapshot,
    StagingStore,
    Subscription,
    bulk_load,
)
from syncd.store.feed import wire_select_list

OWNERS = 1000
BATCH = 5000
MODEL = ClientModel.parse(
    {
        "entities": {
            "account": {
                "key": "id",
                "columns": {
                    "id": "uuid",
                    "owner_id": "integer",
                    "name": "text",
                    "city": "text",
                    "amount": "numeric",
                    "modified_at": "timestamp",
                    "status": "integer",
                },
            }
        },
        "profiles": {
            "sales": {
                "offline": True,
                "entities": {
                    "account": {"filter": {"column": "owner_id", "op": "IN", "param": "user.teams"}}
                },
            }
        },
    }
)


def records(n: int) -> list[tuple[Any, ...]]:
    rnd = random.Random(1)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        (
            uuid.UUID(int=rnd.getrandbits(128), version=4),
            rnd.randrange(OWNERS),
            f"Account {i}",
            rnd.choice(("Oslo", "Lyon", "Porto", "Turin")),
            Decimal(rnd.randrange(10**7)) / 100,
            t0 + timedelta(seconds=i),
            rnd.randrange(5),
        )
        for i in range(n)
    ]


Timing = tuple[int, float]  # (rows, seconds)


async def feed_rate(store: StagingStore, since: Snapshot | None, sub: Subscription) -> Timing:
    t = time.perf_counter()
    stream = await store.changes(since, [sub], batch_size=BATCH)
    n = 0
    async for batch in stream:
        n += len(batch.upserts) + len(batch.deletes)
    return n, time.perf_counter() - t


async def ceiling_rate(store: StagingStore, where: str, *args: object) -> Timing:
    sql = f"SELECT {wire_select_list(MODEL.entity('account'), 't')} FROM account t WHERE {where}"
    pool = await store.pool()
    t = time.perf_counter()
    rows = await pool.fetch(sql, *args)
    return len(rows), time.perf_counter() - t


async def paired(
    rounds: int, feed: Callable[[], Awaitable[Timing]], ceiling: Callable[[], Awaitable[Timing]]
) -> tuple[list[Timing], list[Timing], float]:
    """Time the feed and its ceiling ``rounds`` times each, alternating which goes first so
    neither always finds the other's pages in the cache (or pays for hint bits alone).

    One untimed round first: every pooled connection prepares a statement text once, and in
    the daemon all devices share those texts (filter values are parameters), so the timed
    rounds measure the steady state rather than the first device after a restart.
    """
    await feed()
    await ceiling()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    feeds: list[Timing] = []
    ceilings: list[Timing] = []
    for i in range(rounds):
        if i % 2:
            ceilings.append(await ceiling())
            feeds.append(await feed())
        else:
            feeds.append(await feed())
            ceilings.append(await ceiling())
    # The bench process's share of a core over the rounds (asyncpg decoding, the feed).
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return feeds, ceilings, cpu


def report(label: str, feeds: list[Timing], ceilings: list[Timing], cpu: float) -> None:
    """Median rates, the ratio of the medians, and each round's own ratio (the spread)."""
    f = statistics.median(n / s for n, s in feeds)
    c = statistics.median(n / s for n, s in ceilings)
    each = " ".join(
        f"{(a[0] / a[1]) / (b[0] / b[1]):.0%}" for a, b in zip(feeds, ceilings, strict=True)
    )
    print(
        f"{label:<28} {feeds[0][0]:>9,} rows  feed {f:>11,.0f} rows/s  "
        f"ceiling {c:>11,.0f} rows/s ({ceilings[0][0]:,} rows)  ratio {f / c:5.0%}"
        f"  (rounds: {each})",
        flush=True,
    )
    record.current().figure(
        f"feed, {label}",
        "rows/s",
        [n / s for n, s in feeds],
        ceiling_samples=[n / s for n, s in ceilings],
        ceiling_name="one asyncpg fetch, same casts and WHERE",
        cpu={"bench": cpu},
        params={"rows": feeds[0][0], "ceiling_rows": ceilings[0][0]},
        phase="feed",
    )


async def run(rows: int, dsn: str, rounds: int) -> None:
    stores = OrgStores(dsn)
    org = f"bench-{uuid.uuid4().hex[:8]}"
    store = await stores.provision(org, MODEL)
    try:
        entity = MODEL.entity("account")
        pool = await store.pool()
        data = records(rows)
        t = time.perf_counter()
        async with pool.acquire() as conn:
            version = conn.get_server_version()
            record.current().note("postgresql", f"{version.major}.{version.minor}")
            with progress.bar("loading by COPY", rows) as bar:
                await bulk_load(conn, entity, progress.counted(data, bar))
            # What autovacuum does within a minute of a bulk load anyway: hint bits and the
            # visibility map set, so no timed pass pays for them alone.
            await conn.execute("VACUUM ANALYZE account")
            await conn.execute("ANALYZE _syncd_changes")
        load = time.perf_counter() - t
        # Not kept: a million live row tuples made every full garbage collection of the timed
        # rounds walk them, pauses of tens of ms landing on feed or ceiling at random.
        del data
        gc.collect()
        print(f"COPY load {rows:,} rows: {rows / load:,.0f} rows/s (triggers + change log)")
        record.current().figure(
            "COPY load (triggers + change log)", "rows/s", [rows / load],
            params={"rows": rows}, phase="feed",
        )  # fmt: skip

        visible = "pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
        cp = await store.current_checkpoint()
        everyone = Subscription(entity)
        report(
            "initial, all owners",
            *await paired(
                rounds,
                lambda: feed_rate(store, None, everyone),
                lambda: ceiling_rate(store, visible, cp.as_pg()),
            ),
        )
        for owners in (1, 10, 100):
            ids = list(range(owners))
            flt = RowFilter.from_spec({"column": "owner_id", "op": "IN", "param": "o"}, {"o": ids})
            sub = Subscription(entity, flt)
            where = f"{visible} AND t.owner_id = ANY($2::bigint[])"
            report(
                f"initial, {owners} owner(s)",
                *await paired(
                    rounds,
                    functools.partial(feed_rate, store, None, sub),
                    functools.partial(ceiling_rate, store, where, cp.as_pg(), ids),
                ),
            )

        changed = rows // 10
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE account SET status = status + 1 WHERE id IN"
                " (SELECT id FROM account ORDER BY id LIMIT $1)",
                changed,
            )
            await conn.execute("ANALYZE account; ANALYZE _syncd_changes")
        cp2 = await store.current_checkpoint()
        window = (
            "NOT pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
            " AND pg_visible_in_snapshot(t._txid, $2::pg_snapshot)"
        )
        report(
            f"incremental, {changed:,} updated",
            *await paired(
                rounds,
                lambda: feed_rate(store, cp, everyone),
                lambda: ceiling_rate(store, window, cp.as_pg(), cp2.as_pg()),
            ),
        )
    finally:
        await stores.deprovision(org)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds per case; medians are reported"
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV),
        help=f"PostgreSQL server (default: ${DSN_ENV}, else a temporary embedded one)",
    )
    args = parser.parse_args(argv)
    with record.bench_run("feed", argv):
        _main(args)


def _main(args: argparse.Namespace) -> None:
    if args.dsn:
        uvloop.run(run(args.rows, args.dsn, args.rounds))
        return
    base = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    server = EmbeddedPostgres(base / "data")
    server.start()
    try:
        uvloop.run(run(args.rows, server.dsn(), args.rounds))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
