"""Upload throughput: ops applied per second, with validation, filters and conflict checks.

Usage:
    python -m bench.upload [--devices 1,100] [--batches 20] [--ops 500] [--pool 8]
                           [--daemon] [--ingest-rows N] [--dsn postgresql://...]

Strategy: simulated devices upload into a real staging database with the CRM-like account
table and a per-owner filter. Each device owns its rows, inserts a batch, then updates those
rows on their current version, so half the ops are inserts and half conflict-checked updates.
By default they call the server's upload path in this process (`apply_upload_batch`: per-op
validation, key locks, filter checks before and after, conflict checks, write-back outbox,
idempotency record) with messages built as the protocol decoder builds them: that isolates
the upload path. With ``--daemon`` they speak the protocol over TLS to a syncd subprocess,
which also streams every device's own rows back to it as live CHANGES (each device is its own
filter group), so that figure is uploads plus live fan-out on the same 2 cores.

Reports ops/s in aggregate, the p50/p99 batch latency, and the CPU used per second of wall
time by this process, the daemon and PostgreSQL, so a figure says which side bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvloop

from protocol import CaughtUp, Upload, UploadOp, UploadResult
from syncd.auth import Claims
from syncd.model import ClientModel
from syncd.server.plan import plan_for
from syncd.server.upload_batch import apply_upload_batch
from syncd.store import OrgStores, StagingStore

from . import record
from .common import (
    DSN_ENV,
    DaemonProcess,
    Endpoint,
    PgServer,
    cpu_seconds,
    embedded_server,
    load_org,
    postgres_cpu_seconds,
)
from .latency import summarize
from .sync import WireDevice

MODEL_SPEC: dict[str, Any] = {
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
            "entities": {"account": {"filter": {"column": "owner", "op": "=", "param": "user.id"}}},
        }
    },
    "default_profile": "field",
}
MODEL = ClientModel.parse(MODEL_SPEC)


def _batch(user: str, b: int, keys: list[str], versions: dict[str, int]) -> list[UploadOp]:
    """Even batches insert the device's rows, odd ones update them on their current version."""
    if b % 2 == 0:
        return [
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
    return [
        UploadOp(
            op="update",
            entity="account",
            key=k,
            base_version=versions[k],
            values={"status": b, "name": f"u{b}"},
        )
        for k in keys
    ]


Send = Callable[[Upload], Awaitable[UploadResult]]


async def _device(send: Send, user: str, batches: int, ops: int, latencies: list[float]) -> int:
    applied = 0
    keys: list[str] = []
    versions: dict[str, int] = {}
    for b in range(batches):
        if b % 2 == 0:
            keys = [str(uuid.uuid4()) for _ in range(ops)]
        upload = Upload(batch_id=str(uuid.uuid4()), ops=tuple(_batch(user, b, keys, versions)))
        started = time.perf_counter()
        result = await send(upload)
        latencies.append(time.perf_counter() - started)
        for k, r in zip(keys, result.results, strict=True):
            if r.status != "applied" or r.version is None:
                raise RuntimeError(f"op not applied: {r}")
            versions[k] = r.version
            applied += 1
    return applied


def _direct(store: StagingStore, user: str) -> Send:
    """The server's upload path called in this process (no TLS, no framing)."""
    plan = plan_for(MODEL, 1, None, Claims(user, "bench", 2**40, (), (), {}))
    device = uuid.uuid4().hex

    async def send(upload: Upload) -> UploadResult:
        return await apply_upload_batch(store, plan, user, device, upload)

    return send


class _UploadingDevice(WireDevice):
    """A wire device that uploads: its own rows come back as CHANGES, which it reads past."""

    async def upload(self, upload: Upload) -> UploadResult:
        self._send(upload)
        while not isinstance(message := await self.next(), UploadResult):
            pass
        return message


Measured = tuple[float, list[float], dict[str, float | None]]
"""ops/s, batch latencies in ms, and each process's share of a core."""


async def _scenario(
    senders: list[Send], pg: PgServer | None, batches: int, ops: int, daemon: int | None = None
) -> Measured:
    """Run the devices once; prints its line."""
    latencies: list[float] = []
    own0 = cpu_seconds(os.getpid()) or 0.0
    daemon0 = cpu_seconds(daemon) or 0.0
    pg0 = postgres_cpu_seconds(pg) if pg is not None else 0.0
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(_device(send, f"user{d}", batches, ops, latencies) for d, send in enumerate(senders))
    )
    elapsed = time.perf_counter() - started
    own = (cpu_seconds(os.getpid()) or 0.0) - own0
    pg_cpu = postgres_cpu_seconds(pg) - pg0 if pg is not None else float("nan")
    lat = summarize(t * 1000 for t in latencies)
    total = sum(counts)
    cpus: dict[str, float | None] = {"bench": own / elapsed, "postgres": pg_cpu / elapsed}
    cpu = f"cpu: bench {own / elapsed:.0%}"
    if daemon is not None:
        cpus["daemon"] = ((cpu_seconds(daemon) or 0.0) - daemon0) / elapsed
        cpu += f" daemon {cpus['daemon']:.0%}"
    print(
        f"devices={len(senders):4d} ops/batch={ops} batches={lat.count} ops={total}"
        f" elapsed={elapsed:.2f}s ops/s={total / elapsed:,.0f}"
        f" batch p50={lat.p50:.1f}ms p90={lat.p90:.1f}ms p99={lat.p99:.1f}ms"
        f" p99.9={lat.p999:.1f}ms max={lat.max:.1f}ms"
        f" {cpu} postgres {pg_cpu / elapsed:.0%}"
    )
    return total / elapsed, [t * 1000 for t in latencies], cpus


async def _repeated(
    senders: list[Send], pg: PgServer | None, batches: int, ops: int, rounds: int, path: str,
    daemon: int | None = None,
) -> None:  # fmt: skip
    """The same devices `rounds` times, recorded as one figure with every round's ops/s."""
    done = [await _scenario(senders, pg, batches, ops, daemon) for _ in range(rounds)]
    lat = summarize(ms for _, latencies, _ in done for ms in latencies)
    keys = {k for _, _, cpus in done for k in cpus}
    cpu: dict[str, float | None] = {}
    for k in sorted(keys):
        values = [v for _, _, cpus in done if (v := cpus.get(k)) is not None]
        cpu[k] = statistics.median(values) if values else None
    record.current().figure(
        f"upload, {len(senders)} device{'s' if len(senders) > 1 else ''} ({path})",
        "ops/s",
        [ops_s for ops_s, _, _ in done],
        cpu=cpu,
        latency=lat,
        params={"devices": len(senders), "ops_per_batch": ops, "batches": lat.count},
        phase="upload",
    )


async def _ingest_update(store: StagingStore, rows: int) -> None:
    """The ingest role's bulk UPDATE on a connection that already updated one row (the case
    that once reused a one-row trigger plan and went quadratic)."""
    pool = await store.pool()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO account (id, name, owner, amount, modified_at, status)"
            " SELECT gen_random_uuid(), 'n' || i, 'ingest', 1.5, now(), i"
            " FROM generate_series(1, $1) i",
            rows,
        )
        for _ in range(6):
            await conn.execute(
                "UPDATE account SET status = status + 1"
                " WHERE id = (SELECT id FROM account WHERE owner = 'ingest' LIMIT 1)"
            )
        started = time.perf_counter()
        await conn.execute("UPDATE account SET status = status + 1 WHERE owner = 'ingest'")
        elapsed = time.perf_counter() - started
        await conn.execute("DELETE FROM account WHERE owner = 'ingest'")
    print(f"ingest bulk UPDATE of {rows:,} rows: {elapsed:.2f}s {rows / elapsed:,.0f} rows/s")


async def run(
    dsn: str,
    pg: PgServer | None,
    devices: list[int],
    batches: int,
    ops: int,
    pool: int,
    ingest_rows: int = 0,
    rounds: int = 3,
) -> None:
    stores = OrgStores(dsn, pool_size=pool)
    org = f"bench-{uuid.uuid4().hex[:8]}"
    store = await stores.provision(org, MODEL)
    try:
        if ingest_rows:
            await _ingest_update(store, ingest_rows)
        await _scenario([_direct(store, "user0")], pg, 2, ops)  # warm-up: pool, statements
        for n in devices:
            senders = [_direct(store, f"user{d}") for d in range(n)]
            await _repeated(senders, pg, batches, ops, rounds, "in process")
    finally:
        await stores.deprovision(org)
        await stores.close_all()


async def run_daemon(
    pg: PgServer, endpoint: Endpoint, pid: int | None, devices: list[int], batches: int, ops: int,
    rounds: int = 3,
) -> None:  # fmt: skip
    """The same devices over TLS to a daemon in its own process: framing, msgpack, sessions,
    and each device's own rows coming back to it as live CHANGES."""
    for i, n in enumerate([1, *devices]):  # the first, 1-device pass warms the daemon up
        wires = [_UploadingDevice(endpoint, "uploads", user=f"user{d}") for d in range(n)]
        try:
            for w in wires:
                await w.connect()
                while not isinstance(await w.next(), CaughtUp):
                    pass
            senders: list[Send] = [w.upload for w in wires]
            if i == 0:
                await _scenario(senders, pg, 2, ops, pid)
            else:
                await _repeated(senders, pg, batches, ops, rounds, "daemon over TLS", pid)
        finally:
            await asyncio.gather(*(w.close() for w in wires))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,100", help="comma-separated device counts")
    parser.add_argument("--batches", type=int, default=20, help="batches per device")
    parser.add_argument("--ops", type=int, default=500, help="ops per batch")
    parser.add_argument("--pool", type=int, default=8, help="staging connections")
    parser.add_argument(
        "--dsn", default=os.environ.get(DSN_ENV), help=f"PostgreSQL server (default: ${DSN_ENV},"
        " else a temporary embedded one)",
    )  # fmt: skip
    parser.add_argument("--daemon", action="store_true", help="through a syncd subprocess over TLS")
    parser.add_argument(
        "--ingest-rows", type=int, default=0, help="first time a bulk UPDATE of this many rows"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each device count")
    args = parser.parse_args(argv)
    with record.bench_run("upload", argv):
        _main(args)


def _main(args: argparse.Namespace) -> None:
    devices = [int(n) for n in args.devices.split(",")]
    if args.dsn:
        uvloop.run(
            run(args.dsn, None, devices, args.batches, args.ops, args.pool, args.ingest_rows,
                args.rounds)
        )  # fmt: skip
        return
    with embedded_server("syncd-bench-upload-") as pg:
        if not args.daemon:
            uvloop.run(
                run(pg.dsn, pg, devices, args.batches, args.ops, args.pool, args.ingest_rows,
                    args.rounds)
            )  # fmt: skip
            return
        uvloop.run(load_org(pg, "uploads", 0, model=MODEL_SPEC))
        daemon = DaemonProcess(pg)
        with daemon as endpoint:
            try:
                uvloop.run(
                    run_daemon(
                        pg, endpoint, daemon.pid, devices, args.batches, args.ops, args.rounds
                    )
                )
            except BaseException:
                print(f"--- daemon log tail ---\n{daemon.log_tail()}")
                raise


if __name__ == "__main__":
    main()
