"""Upload throughput: ops applied per second, with validation, filters and conflict checks.

Usage:
    python -m bench.upload [--devices 1,100] [--batches 20] [--ops 500] [--dsn postgresql://...]

Strategy: simulated devices call the server's upload path (`apply_upload_batch`: per-op
validation, key locks, filter checks before and after, conflict checks, write-back outbox,
idempotency record) against a real staging database with the CRM-like account table and a
per-owner filter. Each device owns its rows, inserts a batch, then updates those rows on their
current version, so half the ops are inserts and half conflict-checked updates. Messages are
built as the protocol decoder builds them (validated dataclasses); TLS and framing are left
out (CEILINGS.md has their cost). Reports ops/s in aggregate and the p50/p99 batch latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import uvloop

from protocol import Upload, UploadOp
from syncd.auth import Claims
from syncd.model import ClientModel
from syncd.server.plan import plan_for
from syncd.server.uploads import apply_upload_batch
from syncd.store import OrgStores, StagingStore

from .common import PgServer, cpu_seconds, embedded_server, postgres_cpu_seconds

MODEL = ClientModel.parse(
    {
        "entities": {
            "account": {
                "key": "id",
                "columns": {
                    "id": "uuid",
                    "name": "text",
                    "owner": "text",
                    "amount": "numeric",
                    "modified_at": "timestamp",
                    "status": "integer",
                },
                "writable": ["name", "owner", "amount", "modified_at", "status"],
            }
        },
        "profiles": {
            "field": {
                "offline": True,
                "entities": {
                    "account": {"filter": {"column": "owner", "op": "=", "param": "user.id"}}
                },
            }
        },
        "default_profile": "field",
    }
)


async def _device(
    store: StagingStore, user: str, batches: int, ops: int, latencies: list[float]
) -> int:
    plan = plan_for(MODEL, 1, None, Claims(user, "bench", 2**40, (), (), {}))
    device = uuid.uuid4().hex
    applied = 0
    keys = [str(uuid.uuid4()) for _ in range(ops)]
    versions: dict[str, int] = {}
    for b in range(batches):
        if b % 2 == 0:
            keys = [str(uuid.uuid4()) for _ in range(ops)]
            batch = [
                UploadOp(
                    op="insert",
                    entity="account",
                    key=k,
                    values={
                        "name": f"n{i}",
                        "owner": user,
                        "amount": "12.50",
                        "modified_at": 1_700_000_000_000_000 + i,
                        "status": i,
                    },
                )
                for i, k in enumerate(keys)
            ]
        else:
            batch = [
                UploadOp(
                    op="update",
                    entity="account",
                    key=k,
                    base_version=versions[k],
                    values={"status": b, "name": f"u{b}"},
                )
                for k in keys
            ]
        upload = Upload(batch_id=str(uuid.uuid4()), ops=tuple(batch))
        started = time.perf_counter()
        result = await apply_upload_batch(store, plan, user, device, upload)
        latencies.append(time.perf_counter() - started)
        for k, r in zip(keys, result.results, strict=True):
            if r.status != "applied" or r.version is None:
                raise RuntimeError(f"op not applied: {r}")
            versions[k] = r.version
            applied += 1
    return applied


async def _scenario(
    store: StagingStore, pg: PgServer | None, devices: int, batches: int, ops: int
) -> None:
    latencies: list[float] = []
    own0 = cpu_seconds(os.getpid()) or 0.0
    pg0 = postgres_cpu_seconds(pg) if pg is not None else 0.0
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(_device(store, f"user{d}", batches, ops, latencies) for d in range(devices))
    )
    elapsed = time.perf_counter() - started
    own = (cpu_seconds(os.getpid()) or 0.0) - own0
    pg_cpu = postgres_cpu_seconds(pg) - pg0 if pg is not None else float("nan")
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    total = sum(counts)
    print(
        f"devices={devices:4d} ops/batch={ops} batches={len(latencies)} ops={total}"
        f" elapsed={elapsed:.2f}s ops/s={total / elapsed:,.0f}"
        f" batch p50={p50 * 1000:.1f}ms p99={p99 * 1000:.1f}ms"
        f" cpu: bench {own / elapsed:.0%} postgres {pg_cpu / elapsed:.0%}"
    )


async def run(
    dsn: str, pg: PgServer | None, devices: list[int], batches: int, ops: int, pool: int
) -> None:
    stores = OrgStores(dsn, pool_size=pool)
    org = f"bench_{uuid.uuid4().hex[:8]}"
    store = await stores.provision(org, MODEL)
    try:
        await _scenario(store, pg, 1, 2, ops)  # warm-up: pool, prepared statements
        for n in devices:
            await _scenario(store, pg, n, batches, ops)
    finally:
        await stores.deprovision(org)
        await stores.close_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,100", help="comma-separated device counts")
    parser.add_argument("--batches", type=int, default=20, help="batches per device")
    parser.add_argument("--ops", type=int, default=500, help="ops per batch")
    parser.add_argument("--pool", type=int, default=8, help="staging connections")
    parser.add_argument("--dsn", default=None, help="PostgreSQL server (default: embedded)")
    args = parser.parse_args()
    devices = [int(n) for n in args.devices.split(",")]
    if args.dsn:
        uvloop.run(run(args.dsn, None, devices, args.batches, args.ops, args.pool))
        return
    with embedded_server("syncd-bench-upload-") as pg:
        uvloop.run(run(pg.dsn, pg, devices, args.batches, args.ops, args.pool))


if __name__ == "__main__":
    main()
