"""Bench the change feed against the raw asyncpg ceiling, in one run.

Loads a CRM-like entity with COPY, then times "changes since checkpoint" (initial sync with no
filter and with owner filters of 1, 10 and 100 owners, then an incremental window after
updating 10% of the rows) and, right after each, one plain fetch of the same rows with the
same columns, casts and WHERE. Ratios within one run are what to compare (CEILINGS.md).

    python -m bench.feed [--rows 1000000] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvloop

from syncd.model import ClientModel
from syncd.store import (
    Checkpoint,
    EmbeddedPostgres,
    OrgStores,
    RowFilter,
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


async def feed_rate(
    store: StagingStore, since: Checkpoint | None, sub: Subscription
) -> tuple[int, float, Checkpoint]:
    t = time.perf_counter()
    stream = await store.changes(since, [sub], batch_size=BATCH)
    n = 0
    async for batch in stream:
        n += len(batch.upserts) + len(batch.deletes)
    return n, time.perf_counter() - t, stream.checkpoint


async def ceiling_rate(store: StagingStore, where: str, *args: object) -> tuple[int, float]:
    sql = f"SELECT {wire_select_list(MODEL.entity('account'), 't')} FROM account t WHERE {where}"
    pool = await store.pool()
    t = time.perf_counter()
    rows = await pool.fetch(sql, *args)
    return len(rows), time.perf_counter() - t


def report(label: str, feed: tuple[int, float], ceiling: tuple[int, float]) -> None:
    f, c = feed[0] / feed[1], ceiling[0] / ceiling[1]
    print(
        f"{label:<28} {feed[0]:>9,} rows  feed {f:>11,.0f} rows/s  "
        f"ceiling {c:>11,.0f} rows/s ({ceiling[0]:,} rows)  ratio {f / c:5.0%}"
    )


async def run(rows: int, dsn: str) -> None:
    stores = OrgStores(dsn)
    org = f"bench_{uuid.uuid4().hex[:8]}"
    store = await stores.provision(org, MODEL)
    try:
        entity = MODEL.entity("account")
        data = records(rows)
        pool = await store.pool()
        t = time.perf_counter()
        async with pool.acquire() as conn:
            await bulk_load(conn, entity, data)
            await conn.execute("ANALYZE account; ANALYZE _syncd_changes")
        load = time.perf_counter() - t
        print(f"COPY load {rows:,} rows: {rows / load:,.0f} rows/s (triggers + change log)")

        visible = "pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
        n, s, cp = await feed_rate(store, None, Subscription(entity))
        report("initial, all owners", (n, s), await ceiling_rate(store, visible, cp.as_pg()))
        for owners in (1, 10, 100):
            ids = list(range(owners))
            flt = RowFilter.from_spec({"column": "owner_id", "op": "IN", "param": "o"}, {"o": ids})
            n, s, _ = await feed_rate(store, None, Subscription(entity, flt))
            c = await ceiling_rate(
                store, f"{visible} AND t.owner_id = ANY($2::bigint[])", cp.as_pg(), ids
            )
            report(f"initial, {owners} owner(s)", (n, s), c)

        changed = rows // 10
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE account SET status = status + 1 WHERE id IN"
                " (SELECT id FROM account ORDER BY id LIMIT $1)",
                changed,
            )
            await conn.execute("ANALYZE account; ANALYZE _syncd_changes")
        n, s, cp2 = await feed_rate(store, cp, Subscription(entity))
        c = await ceiling_rate(
            store,
            "NOT pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
            " AND pg_visible_in_snapshot(t._txid, $2::pg_snapshot)",
            cp.as_pg(),
            cp2.as_pg(),
        )
        report(f"incremental, {changed:,} updated", (n, s), c)
    finally:
        await stores.deprovision(org)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dsn", help="PostgreSQL server (default: a temporary embedded one)")
    args = parser.parse_args()
    if args.dsn:
        uvloop.run(run(args.rows, args.dsn))
        return
    base = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    server = EmbeddedPostgres(base / "data")
    server.start()
    try:
        uvloop.run(run(args.rows, server.dsn()))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
