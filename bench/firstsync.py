"""First sync of a big device (issue 16): 1M and 3M CRM rows, compressed or not, on loopback
and through a phone-like link, each figure beside its ceiling from the same run.

Strategy. One embedded PostgreSQL holds one org per size: `account` rows by COPY (bench's
CRM rows) and a small `owner` entity of priority 0 (what an app opens on first). The daemon
runs in a subprocess (its own core; its CPU and RSS are read from /proc). For each size:

* ceilings: asyncpg streaming the same rows with the feed's casts (one cursor, heap order),
  and raw `executemany` INSERTs of the same rows into SQLite in 20,000-row transactions,
  with SQLite's default WAL checkpointing (bench.localdb's ceiling) and with the
  device's bulk setting;
* received: a protocol-level device (decode and ack only), with zstd and without: rows/s,
  wire bytes per row, the daemon's CPU seconds per million rows;
* committed: the SDK (`SyncClient` + `LocalDB`) into SQLite, with zstd: rows/s to caught_up,
  peak RSS of the device (this process) and of the daemon, sampled every 50 ms;
* committed, device alone: the same SDK download from bench/replay.py, which plays what the
  daemon sent the zstd device above (recorded after TLS) as fast as the SDK reads it, so
  the figure is the device's own (TLS, zstd, msgpack, SQLite) with no daemon or PostgreSQL
  competing for the cores; with the device's CPU seconds per million rows; 3 times, each
  beside the raw SQLite ceilings (the medians are printed);
* resumable: the SDK cut off (its task cancelled, like an app killed) once half the rows
  are committed, then resumed: rows sent twice, and whether the device ends with every row.

Then, through bench/shaper.py (default 20 Mbit/s, 50 ms RTT), the SDK's first sync of a
smaller org: time to the first usable entity (priority 0 committed), total time, and the
total against the link's floor, bytes / bandwidth; then the same download by an SDK that
offers no codec (what compression saves on such a link).

`--feed-options` instead measures, on the first size, the shapes the server could read an
initial download in (docs/ARCHITECTURE.md, "First sync of a big device"): the feed as it is
(keyset pages of `batch_size` rows in key order, one read ahead), the same with 10,000-row
pages, the feed in storage order (`sync.initial_read_order = "storage"`: heap block ranges
of 10,000 rows, sorted per page), filters matching 50%, 10% and 0.1% of the rows read either
way, one key-ordered cursor for the whole download, ad-hoc heap-order block ranges sorted per
page, and the heap-order streaming ceiling; every shape with the feed's casts and its
snapshot-visibility test. Ratios compare times (the ceiling's, streaming every row, over the
shape's), so a filtered shape above 100% read its rows in less time than streaming them all.

`--shape` names the rows the `account` entity holds (bench/shapes.py): `narrow`, bench's CRM
rows (~85 wire bytes, the default: every figure recorded before it existed is on them), or
`crm`, contact-like rows of ~156 bytes (names, e-mail, phone, company, city, status, two
timestamps, a description), the row size issue 16's compression goal was set on; a list runs
every size on each shape in turn.

`--codecs` instead prints the codec micro-measure behind protocol/compression.py's choice,
on each shape's rows (bench/framecodecs.py: zstd levels, lz4, bigger frames, a trained
dictionary, a column-wise layout; no database). `--compression` runs that micro-measure and
then, per shape and size, the end-to-end figures of compression only: a protocol-level
device's download with zstd and without, alternated 3 times, each beside asyncpg streaming
the same rows (rows/s, wire bytes per row, the daemon's CPU seconds per million rows).

    python -m bench.firstsync [--rows 1000000,3000000] [--shaped-rows 200000]
                              [--shape narrow[,crm]] [--mbit 20] [--rtt-ms 50]
                              [--codecs | --compression] [--codec-rows 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import psutil
import uvloop

from bench import framecodecs, record
from bench.common import (
    CRM_MODEL,
    DaemonProcess,
    Endpoint,
    PgServer,
    cpu_seconds,
    embedded_server,
    load_org,
    print_table,
    rss_bytes,
    with_database,
)
from bench.replay import ReplayServer
from bench.shaper import Link, ShapingProxy
from bench.shapes import SHAPES, Shape, model_with
from protocol import (
    NEED_DATA,
    Ack,
    CaughtUp,
    Changes,
    Checkpoint,
    Connection,
    ConnectionClosed,
    Error,
    Goodbye,
    Hello,
    Ping,
    Pong,
    Role,
)
from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.devcerts import ensure_dev_pki
from syncd.model import ClientModel
from syncd.store.feed import wire_select_list
from syncd.store.sql import database_name

READ_CHUNK: Final = 256 * 1024
CEILING_FETCH: Final = 10_000
SQLITE_TXN_ROWS: Final = 20_000
OWNERS: Final = 1_000
RSS_EVERY_S: Final = 0.05
#: Replayed downloads, each beside raw SQLite of the same rows (medians reported).
REPEATS: Final = 3

MODEL: Final[dict[str, Any]] = {
    "entities": {
        **CRM_MODEL["entities"],
        "owner": {"key": "id", "columns": {"id": "integer", "name": "text"}, "priority": 0},
    },
    "profiles": {"sales": {"offline": True, "entities": {"owner": {}, "account": {}}}},
    "default_profile": "sales",
}
#: Where COPY starts when a shape's rows are loaded (bench.common.load_org's default seed).
SEED: Final = 1


def model_for(shape: Shape) -> dict[str, Any]:
    """MODEL with its `account` entity in `shape`'s columns (MODEL itself for `narrow`)."""
    return model_with(MODEL, shape)


def org_for(shape: Shape, rows: int) -> str:
    """The org holding `rows` accounts of `shape` ("big<rows>" for `narrow`, as before)."""
    return f"big{rows}" if shape.name == "narrow" else f"{shape.name}{rows}"


# --- stage --------------------------------------------------------------------------------


async def load(pg: PgServer, org: str, rows: int, shape: Shape) -> None:
    await load_org(pg, org, rows, model=model_for(shape), seed=SEED, rows_of=shape.rows)
    conn = await asyncpg.connect(with_database(pg.dsn, database_name(org)))
    try:
        await conn.copy_records_to_table(
            "owner", records=[(i, f"Owner {i}") for i in range(OWNERS)], columns=["id", "name"]
        )
    finally:
        await conn.close()


# --- ceilings -----------------------------------------------------------------------------


async def pg_ceiling(pg: PgServer, org: str, model: dict[str, Any] = MODEL) -> float:
    """Seconds for asyncpg to stream the org's accounts with the feed's casts, kept nowhere."""
    entity = ClientModel.parse(model).entity("account")
    conn = await asyncpg.connect(with_database(pg.dsn, database_name(org)))
    try:
        started = time.perf_counter()
        async with conn.transaction():
            cursor = await conn.cursor(f"SELECT {wire_select_list(entity, 't')} FROM account t")
            while await cursor.fetch(CEILING_FETCH):
                pass
        return time.perf_counter() - started
    finally:
        await conn.close()


def sqlite_ceiling(device_db: Path, folder: Path, wal_pages: int) -> float:
    """Seconds of raw executemany INSERTs of the device's own account rows (read back in
    20,000-row chunks, reading not timed) into a fresh table of the same shape."""
    source = sqlite3.connect(device_db)
    target_path = folder / f"ceiling-{wal_pages}.db"
    target = sqlite3.connect(target_path, isolation_level=None)
    try:
        target.execute("PRAGMA journal_mode=WAL")
        target.execute("PRAGMA synchronous=NORMAL")
        target.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        (ddl,) = source.execute("SELECT sql FROM sqlite_master WHERE name = 'account'").fetchone()
        target.execute(ddl)
        width = len(source.execute("SELECT * FROM account LIMIT 1").fetchone())
        insert = f"INSERT INTO account VALUES ({', '.join('?' * width)})"
        cursor = source.execute("SELECT * FROM account")
        spent = 0.0
        while chunk := cursor.fetchmany(SQLITE_TXN_ROWS):
            started = time.perf_counter()
            target.execute("BEGIN")
            target.executemany(insert, chunk)
            target.execute("COMMIT")
            spent += time.perf_counter() - started
        return spent
    finally:
        source.close()
        target.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target_path}{suffix}").unlink(missing_ok=True)


# --- devices ------------------------------------------------------------------------------


@dataclass
class WireResult:
    rows: int
    seconds: float
    wire_bytes: int
    daemon_cpu: float | None


async def wire_download(
    endpoint: Endpoint,
    org: str,
    codecs: tuple[str, ...],
    pid: int | None,
    recording: Path | None = None,
) -> WireResult:
    """A device that decodes and acks only: what the daemon and the link can push. With
    `recording`, what the daemon sent (after TLS) is also written there, for bench.replay."""
    cpu0 = cpu_seconds(pid)
    reader, writer = await asyncio.open_connection(
        endpoint.host,
        endpoint.port,
        ssl=endpoint.ssl_context(),
        server_hostname="localhost",
        limit=READ_CHUNK,
    )
    conn = Connection(Role.DEVICE)
    hello = Hello(
        (1,),
        endpoint.token(org),
        org,
        uuid.uuid4().hex,
        "bench/firstsync",
        compression=codecs or None,
    )
    writer.write(conn.send(hello))
    rows = wire = 0
    sink = contextlib.ExitStack()
    keep = None if recording is None else sink.enter_context(recording.open("wb")).write
    started = time.perf_counter()
    try:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                data = await reader.read(READ_CHUNK)
                wire += len(data)
                if keep is not None:
                    keep(data)
                conn.receive_data(data)
                continue
            if isinstance(event, ConnectionClosed | Error):
                raise RuntimeError(f"the daemon ended the download: {event!r}")
            if isinstance(event, Changes):
                rows += len(event.upserts) + len(event.deletes)
            elif isinstance(event, Checkpoint | CaughtUp):
                writer.write(conn.send(Ack(checkpoint=event.token)))
                if isinstance(event, CaughtUp):
                    break
            elif isinstance(event, Ping):
                writer.write(conn.send(Pong(nonce=event.nonce)))
        seconds = time.perf_counter() - started
        writer.write(conn.send(Goodbye(reason="bench done")))
    finally:
        sink.close()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    cpu1 = cpu_seconds(pid)
    daemon = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return WireResult(rows, seconds, wire, daemon)


class PeakRss:
    """The largest RSS of some processes, sampled every RSS_EVERY_S in a thread."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self.peak: dict[str, int] = {name: 0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            for name, pid in self._pids.items():
                self.peak[name] = max(self.peak[name], rss_bytes(pid) or 0)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class SdkResult:
    rows: int
    seconds: float
    wire_bytes: int
    first_usable: float | None = None
    peak_rss: dict[str, int] = field(default_factory=dict)


def sdk_client(
    endpoint: Endpoint, db: LocalDB, org: str, port: int | None = None, **kw: Any
) -> SyncClient:
    return SyncClient(
        db,
        host=endpoint.host,
        port=port or endpoint.port,
        ssl_context=endpoint.ssl_context(),
        server_hostname="localhost",
        token=endpoint.token(org),
        org=org,
        **kw,
    )


async def sdk_download(
    endpoint: Endpoint,
    org: str,
    path: Path,
    pid: int | None,
    port: int | None = None,
    **kw: Any,
) -> SdkResult:
    """The SDK's first sync into a new database at `path`; `kw` goes to SyncClient (say,
    `compression=()` for a device that offers no codec)."""
    first: list[float] = []
    started = time.perf_counter()

    def usable(priority: int) -> None:
        if priority == 0 and not first:
            first.append(time.perf_counter() - started)

    with LocalDB.open(path) as db, PeakRss({"device": psutil.Process().pid, "daemon": pid}) as rss:
        client = sdk_client(endpoint, db, org, port, on_priority_complete=usable, **kw)
        stats = await client.sync_once()
        seconds = time.perf_counter() - started
    return SdkResult(
        stats.rows_applied, seconds, stats.bytes_received, first[0] if first else None, rss.peak
    )


async def replayed_download(
    endpoint: Endpoint, org: str, recording: Path, path: Path
) -> tuple[SdkResult, float]:
    """The SDK's download of a recorded stream from bench.replay: (result, device CPU s)."""
    pki = ensure_dev_pki(endpoint.ca_cert.parent)
    with ReplayServer(recording, pki.server_cert, pki.server_key) as server:
        cpu0 = time.process_time()
        result = await sdk_download(endpoint, org, path, None, port=server.port)
        return result, time.process_time() - cpu0


async def resumed_download(
    endpoint: Endpoint, org: str, path: Path, total: int
) -> tuple[int, int, int]:
    """Cut the SDK's download once half the rows are committed (its task cancelled, as an app
    killed), then resume. Returns (rows committed at the cut, rows the resumed session
    received, rows on the device at the end)."""
    with LocalDB.open(path) as db:
        half = asyncio.Event()

        def progress(stats: Any) -> None:
            if stats.rows_applied >= total // 2:
                half.set()

        client = sdk_client(endpoint, db, org, on_progress=progress)
        task = asyncio.create_task(client.sync_once())
        waiter = asyncio.create_task(half.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await client.close()
        kept = db.count("account") + db.count("owner")
        stats = await sdk_client(endpoint, db, org).sync_once()
        return kept, stats.rows_received, db.count("account") + db.count("owner")


# --- runs ---------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


async def one_size(
    pg: PgServer,
    endpoint: Endpoint,
    shape: Shape,
    rows: int,
    pid: int | None,
    folder: Path,
) -> None:
    run = record.current()
    org, model = org_for(shape, rows), model_for(shape)
    params = {"rows": rows, "shape": shape.name}
    pg_s = await pg_ceiling(pg, org, model)
    recording = folder / f"stream-{rows}.bin"
    zstd = await wire_download(endpoint, org, ("zstd",), pid, recording)
    plain = await wire_download(endpoint, org, (), pid)
    pg_again = await pg_ceiling(pg, org, model)
    ceiling_rate = rows / min(pg_s, pg_again)
    sdk = await sdk_download(endpoint, org, folder / f"device-{rows}.db", pid)
    # The device alone and raw SQLite, alternating: each ratio from neighbouring samples.
    alone_rates: list[float] = []
    alone_cpus: list[float] = []
    raw_default: list[float] = []
    raw_bulk: list[float] = []
    for _ in range(REPEATS):
        alone, cpu = await replayed_download(endpoint, org, recording, folder / "alone.db")
        if alone.rows != rows + OWNERS:
            raise RuntimeError(
                f"the replayed download committed {alone.rows:,} of {rows + OWNERS:,}"
            )
        alone_rates.append(alone.rows / alone.seconds)
        alone_cpus.append(cpu * 1e6 / alone.rows)
        for suffix in ("", "-wal", "-shm"):
            (folder / f"alone.db{suffix}").unlink(missing_ok=True)
        for pages, samples in ((1_000, raw_default), (10_000, raw_bulk)):
            spent = sqlite_ceiling(folder / f"device-{rows}.db", folder, pages)
            samples.append((rows + OWNERS) / spent)
    sqlite_default = (rows + OWNERS) / statistics.median(raw_default)
    sqlite_bulk = (rows + OWNERS) / statistics.median(raw_bulk)
    kept, resent_rows, final = await resumed_download(
        endpoint, org, folder / f"cut-{rows}.db", rows
    )
    expected = rows + OWNERS
    resent = resent_rows - (expected - kept)
    for suffix in ("", "-wal", "-shm"):
        for name in (f"device-{rows}.db", f"cut-{rows}.db"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
    recording.unlink()

    received_zstd, received_plain = zstd.rows / zstd.seconds, plain.rows / plain.seconds
    committed = sdk.rows / sdk.seconds
    committed_alone = statistics.median(alone_rates)
    for name, value, top, top_name in (
        ("received rows/s, zstd", received_zstd, ceiling_rate, "asyncpg streaming"),
        ("received rows/s, no compression", received_plain, ceiling_rate, "asyncpg streaming"),
        (
            "committed rows/s (SDK, zstd)",
            committed,
            (rows + OWNERS) / sqlite_default,
            "raw SQLite, default WAL",
        ),
        (
            "committed rows/s vs raw SQLite, bulk WAL",
            committed,
            (rows + OWNERS) / sqlite_bulk,
            "raw SQLite, bulk WAL",
        ),
    ):
        run.figure(
            name, "rows/s", [value], ceiling_samples=[top], ceiling_name=top_name, params=params
        )
    for name, raw, top_name in (
        ("committed rows/s, device alone (replayed stream)", raw_default, "default WAL"),
        ("committed rows/s, device alone, vs raw SQLite bulk WAL", raw_bulk, "bulk WAL"),
    ):
        run.figure(
            name,
            "rows/s",
            alone_rates,
            ceiling_samples=raw,
            ceiling_name=f"raw SQLite, {top_name}",
            params=params,
        )
    run.figure(
        "wire bytes/row, zstd",
        "bytes",
        [zstd.wire_bytes / zstd.rows],
        higher_is_better=False,
        params=params,
    )
    run.figure(
        "wire bytes/row, no compression",
        "bytes",
        [plain.wire_bytes / plain.rows],
        higher_is_better=False,
        params=params,
    )
    for label, result in (("zstd", zstd), ("no compression", plain)):
        if result.daemon_cpu is not None:
            run.figure(
                f"daemon CPU s per 1M rows, {label}",
                "s",
                [result.daemon_cpu * 1e6 / result.rows],
                higher_is_better=False,
                params=params,
            )
    run.figure(
        "device CPU s per 1M rows, device alone",
        "s",
        alone_cpus,
        higher_is_better=False,
        params=params,
    )
    for who, peak in sdk.peak_rss.items():
        run.figure(f"peak RSS, {who}", "bytes", [peak], higher_is_better=False, params=params)
    run.figure(
        "rows re-sent after a cut at half",
        "rows",
        [resent],
        higher_is_better=False,
        params={**params, "kept_at_cut": kept, "final": final, "expected": expected},
    )

    print(
        f"\n{rows:,} accounts ({shape.name} rows) + {OWNERS:,} owners,"
        f" load {record.load_average()[0]:.2f}"
    )
    print_table(
        ["path", "rows/s", "vs ceiling", "wire bytes/row", "daemon CPU s/1M rows"],
        [
            ["asyncpg streaming ceiling", f"{ceiling_rate:,.0f}", "100%", "", ""],
            [
                "received, zstd",
                f"{received_zstd:,.0f}",
                f"{received_zstd / ceiling_rate:.0%}",
                f"{zstd.wire_bytes / zstd.rows:.1f}",
                _cpu(zstd),
            ],
            [
                "received, no compression",
                f"{received_plain:,.0f}",
                f"{received_plain / ceiling_rate:.0%}",
                f"{plain.wire_bytes / plain.rows:.1f}",
                _cpu(plain),
            ],
            [
                "raw SQLite inserts, default WAL",
                f"{(rows + OWNERS) / sqlite_default:,.0f}",
                "100%",
                "",
                "",
            ],
            ["raw SQLite inserts, bulk WAL", f"{(rows + OWNERS) / sqlite_bulk:,.0f}", "", "", ""],
            [
                "committed by the SDK, zstd",
                f"{committed:,.0f}",
                f"{committed * sqlite_default / (rows + OWNERS):.0%}"
                f" / {committed * sqlite_bulk / (rows + OWNERS):.0%}",
                f"{sdk.wire_bytes / sdk.rows:.1f}",
                "",
            ],
            [
                "committed by the SDK, device alone",
                f"{committed_alone:,.0f}",
                f"{committed_alone * sqlite_default / (rows + OWNERS):.0%}"
                f" / {committed_alone * sqlite_bulk / (rows + OWNERS):.0%}",
                f"{alone.wire_bytes / alone.rows:.1f}",
                f"device {statistics.median(alone_cpus):.2f}",
            ],
        ],
    )
    print(
        f"peak RSS: device {mb(sdk.peak_rss['device'])}, daemon {mb(sdk.peak_rss['daemon'])};"
        f" cut at half: {kept:,} kept, {resent:,} rows sent twice,"
        f" {final:,}/{expected:,} at the end"
    )


def _cpu(result: WireResult) -> str:
    return "" if result.daemon_cpu is None else f"{result.daemon_cpu * 1e6 / result.rows:.2f}"


async def shaped(
    endpoint: Endpoint, org: str, rows: int, link: Link, pid: int | None, folder: Path
) -> None:
    run = record.current()
    async with ShapingProxy(endpoint.host, endpoint.port, link) as proxy:
        sdk = await sdk_download(endpoint, org, folder / "shaped.db", pid, port=proxy.port)
    floor = link.seconds_for(proxy.downstream.bytes)
    params = {"rows": rows, "mbit": link.bits_per_second / 1e6, "rtt_ms": link.rtt * 1000}
    run.figure(
        "shaped: total seconds",
        "s",
        [sdk.seconds],
        ceiling_samples=[floor],
        ceiling_name="bytes / bandwidth",
        higher_is_better=False,
        params=params,
    )
    if sdk.first_usable is not None:
        run.figure(
            "shaped: seconds to first usable entity",
            "s",
            [sdk.first_usable],
            higher_is_better=False,
            params=params,
        )
    # The same download by a device that offers no codec: what compression saves on a link.
    async with ShapingProxy(endpoint.host, endpoint.port, link) as bare:
        plain = await sdk_download(
            endpoint, org, folder / "shaped-plain.db", pid, port=bare.port, compression=()
        )
    plain_floor = link.seconds_for(bare.downstream.bytes)
    run.figure(
        "shaped: total seconds, no compression",
        "s",
        [plain.seconds],
        ceiling_samples=[plain_floor],
        ceiling_name="bytes / bandwidth",
        higher_is_better=False,
        params=params,
    )
    first = "n/a" if sdk.first_usable is None else f"{sdk.first_usable:.2f} s"
    print(
        f"\nshaped link {params['mbit']:g} Mbit/s, {params['rtt_ms']:g} ms RTT, {rows:,} accounts,"
        f" load {record.load_average()[0]:.2f}: first usable entity (priority 0) {first};"
        f" total {sdk.seconds:.1f} s for {mb(proxy.downstream.bytes)}, floor {floor:.1f} s"
        f" ({sdk.seconds / floor:.2f}x); without compression {plain.seconds:.1f} s for"
        f" {mb(bare.downstream.bytes)}, floor {plain_floor:.1f} s"
        f" ({plain.seconds / plain_floor:.2f}x)"
    )


def owners_filter(owners: int) -> Any:
    """accounts of the first `owners` owners (of OWNERS, spread evenly over the rows)."""
    from syncd.store import RowFilter

    spec = {"column": "owner_id", "op": "IN", "param": "o"}
    return RowFilter.from_spec(spec, {"o": list(range(owners))})


async def feed_options(
    pg: PgServer, org: str, model: dict[str, Any] = MODEL, rounds: int = 3
) -> None:
    """Seconds per shape of reading every account at one snapshot, best of `rounds`."""
    from syncd.store import Snapshot
    from syncd.store.feed import Subscription
    from syncd.store.initial import BlockPosition, initial_pages

    entity = ClientModel.parse(model).entity("account")
    pool = await asyncpg.create_pool(
        with_database(pg.dsn, database_name(org)), min_size=1, max_size=4
    )
    assert pool is not None
    try:
        snapshot = Snapshot.from_pg((await pool.fetch("SELECT pg_current_snapshot()"))[0][0])
        select = wire_select_list(entity, "t")
        visible = "pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
        pages = int(
            (await pool.fetch("SELECT relpages FROM pg_class WHERE relname = 'account'"))[0][0]
        )

        async def keyset(size: int) -> int:
            rows = 0
            sub = Subscription(entity)
            async for batch in initial_pages(pool.fetch, sub, snapshot, size):
                rows += len(batch.upserts)
            return rows

        filenode = int((await pool.fetch("SELECT pg_relation_filenode('account')"))[0][0])

        async def feed(owners: int | None, *, storage_order: bool) -> int:
            # What the daemon reads: `initial_pages` in batches of 1,000 (the default),
            # filtered to the first `owners` owners (None: unfiltered), in either order. The
            # daemon reads filtered entities in key order only; block ranges of a filtered
            # entity are measured by starting them at the first block.
            rows = 0
            sub = Subscription(entity, None if owners is None else owners_filter(owners))
            start = BlockPosition(filenode, 0) if storage_order and owners is not None else None
            pages = initial_pages(
                pool.fetch, sub, snapshot, 1000, after=start, storage_order=storage_order
            )
            async for batch in pages:
                rows += len(batch.upserts)
            return rows

        async def cursor(order: str) -> int:
            rows = 0
            async with pool.acquire() as conn, conn.transaction():
                sql = f"SELECT {select} FROM account t WHERE {visible}{order}"
                cur = await conn.cursor(sql, snapshot.as_pg())
                while batch := await cur.fetch(CEILING_FETCH):
                    rows += len(batch)
            return rows

        async def block_ranges(blocks: int) -> int:
            # Heap order by TID ranges (PostgreSQL 14+ TID Range Scan), each sorted by key:
            # resumable at a block number, key-ordered within a page only.
            rows, start = 0, 0
            ahead: asyncio.Task[list[Any]] | None = None

            def page(first: int) -> asyncio.Task[list[Any]]:
                sql = (
                    f"SELECT {select} FROM account t WHERE {visible}"
                    f" AND t.ctid >= '({first},0)'::tid AND t.ctid < '({first + blocks},0)'::tid"
                    " ORDER BY t.id"
                )
                return asyncio.ensure_future(pool.fetch(sql, snapshot.as_pg()))

            ahead = page(start)
            while start <= pages:
                current, start = ahead, start + blocks
                ahead = page(start)
                rows += len(await current)
            await ahead
            return rows

        async def chained(size: int) -> int:
            # The feed's unfiltered scan before issue 16: each page starts at the last key of
            # the one before, so one statement runs at a time.
            rows, last = 0, None
            while True:
                bound, args = "", [snapshot.as_pg(), size]
                if last is not None:
                    args.append(last)
                    bound = " AND t.id > $3::uuid"
                sql = (
                    f"SELECT {select} FROM account t WHERE {visible}{bound} ORDER BY t.id LIMIT $2"
                )
                page = await pool.fetch(sql, *args)
                rows += len(page)
                if len(page) < size:
                    return rows
                last = page[-1][0]

        async def planned_ranges(size: int, depth: int) -> int:
            # Key order kept: one index-only pass finds every size-th key (as the feed's
            # filtered scans already do), then `depth` ranges are read at once.
            bounds_sql = (
                "SELECT b.a[i]::text FROM (SELECT array_agg(t.id ORDER BY t.id) AS a"
                " FROM account t) b, generate_series($1::int, cardinality(b.a), $1::int) i"
                " ORDER BY i"
            )
            bounds = [r[0] for r in await pool.fetch(bounds_sql, size)]
            ranges = list(zip([None, *bounds], [*bounds, None], strict=True))

            def page(lower: Any, upper: Any) -> asyncio.Task[list[Any]]:
                where, args = visible, [snapshot.as_pg()]
                for value, op in ((lower, ">"), (upper, "<=")):
                    if value is not None:
                        args.append(value)
                        where += f" AND t.id {op} ${len(args)}::uuid"
                sql = f"SELECT {select} FROM account t WHERE {where} ORDER BY t.id"
                return asyncio.ensure_future(pool.fetch(sql, *args))

            rows = 0
            ahead = [page(*r) for r in ranges[:depth]]
            for r in ranges[depth:]:
                rows += len(await ahead.pop(0))
                ahead.append(page(*r))
            for task in ahead:
                rows += len(await task)
            return rows

        # The index provisioning makes for a filter on owner_id (schema.py): the keyset
        # scan's page boundaries come from it.
        await pool.execute(
            "CREATE INDEX IF NOT EXISTS account_owner_id_id ON account (owner_id, id)"
        )
        await pool.execute("ANALYZE account")

        def filtered_shape(owners: int, storage_order: bool) -> Callable[[], Any]:
            return lambda: feed(owners, storage_order=storage_order)

        filtered = [
            (
                f"filtered to {share} of rows, {order} order",
                filtered_shape(owners, order == "storage"),
            )
            for owners, share in ((500, "50%"), (100, "10%"), (1, "0.1%"))
            for order in ("key", "storage")
        ]
        shapes: list[tuple[str, Callable[[], Any]]] = [
            ("chained keyset pages of 1,000 (the feed before issue 16)", lambda: chained(1000)),
            ("the feed (initial_pages), pages of 1,000", lambda: keyset(1000)),
            ("the feed (initial_pages), pages of 10,000", lambda: keyset(10_000)),
            (
                "the feed in storage order (initial_pages, block ranges of 10,000)",
                lambda: feed(None, storage_order=True),
            ),
            *filtered,
            (
                "key ranges of 1,000 planned by one index pass, 2 at once",
                lambda: planned_ranges(1000, 2),
            ),
            (
                "key ranges of 1,000 planned by one index pass, 4 at once",
                lambda: planned_ranges(1000, 4),
            ),
            ("one key-ordered cursor for the download", lambda: cursor(" ORDER BY t.id")),
            ("heap block ranges of ~10,000 rows, sorted per page", lambda: block_ranges(160)),
            ("heap-order cursor (the streaming ceiling)", lambda: cursor("")),
        ]
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(rounds):
            for name, shape in shapes:
                started = time.perf_counter()
                counts[name] = await shape()
                best[name] = min(best.get(name, 1e9), time.perf_counter() - started)
        top = best[shapes[-1][0]]
        table: list[list[object]] = []
        for name, _shape in shapes:
            rate = counts[name] / best[name]
            record.current().figure(
                f"feed shape: {name}",
                "rows/s",
                [rate],
                ceiling_samples=[counts[name] / top],
                ceiling_name="heap-order cursor",
                params={"rows": counts[name]},
            )
            table.append([name, f"{counts[name]:,}", f"{rate:,.0f}", f"{top / best[name]:.0%}"])
        print(
            f"\nreading {org}'s accounts at one snapshot, best of {rounds},"
            f" load {record.load_average()[0]:.2f}"
        )
        print_table(["shape", "rows", "rows/s", "vs ceiling"], table)
    finally:
        await pool.close()


async def compression(
    pg: PgServer, endpoint: Endpoint, shape: Shape, rows: int, pid: int | None
) -> None:
    """Wire bytes per row, the daemon's CPU and rows/s of one device's download, with zstd
    and without, alternated REPEATS times, each round beside asyncpg streaming the rows."""
    run = record.current()
    org, model = org_for(shape, rows), model_for(shape)
    params = {"rows": rows, "shape": shape.name}
    ceilings: list[float] = []
    downloads: dict[str, list[WireResult]] = {"zstd": [], "none": []}
    for _ in range(REPEATS):
        ceilings.append((rows + OWNERS) / await pg_ceiling(pg, org, model))
        for label, offered in (("zstd", ("zstd",)), ("none", ())):
            result = await wire_download(endpoint, org, offered, pid)
            if result.rows != rows + OWNERS:
                raise RuntimeError(f"the download sent {result.rows:,} of {rows + OWNERS:,}")
            downloads[label].append(result)

    def per_row(label: str) -> list[float]:
        return [r.wire_bytes / r.rows for r in downloads[label]]

    def cpu(label: str) -> list[float]:
        return [r.daemon_cpu * 1e6 / r.rows for r in downloads[label] if r.daemon_cpu is not None]

    def rates(label: str) -> list[float]:
        return [r.rows / r.seconds for r in downloads[label]]

    run.figure(
        "compression: wire bytes/row, zstd",
        "bytes",
        per_row("zstd"),
        ceiling_samples=per_row("none"),
        ceiling_name="no compression",
        higher_is_better=False,
        params=params,
    )
    if cpu("zstd") and cpu("none"):
        run.figure(
            "compression: daemon CPU s per 1M rows, zstd",
            "s",
            cpu("zstd"),
            ceiling_samples=cpu("none"),
            ceiling_name="no compression",
            higher_is_better=False,
            params=params,
        )
    for label in ("zstd", "none"):
        run.figure(
            f"compression: received rows/s, {label}",
            "rows/s",
            rates(label),
            ceiling_samples=ceilings,
            ceiling_name="asyncpg streaming",
            params=params,
        )
    median = statistics.median
    ceiling = median(ceilings)
    table: list[list[object]] = [["asyncpg streaming ceiling", f"{ceiling:,.0f}", "100%", "", ""]]
    for label, name in (("zstd", "received, zstd -1"), ("none", "received, no compression")):
        daemon = f"{median(cpu(label)):.2f}" if cpu(label) else ""
        table.append(
            [
                name,
                f"{median(rates(label)):,.0f}",
                f"{median(rates(label)) / ceiling:.0%}",
                f"{median(per_row(label)):.1f}",
                daemon,
            ]
        )
    print(
        f"\n{shape.name} rows: {rows:,} accounts + {OWNERS:,} owners, medians of {REPEATS}"
        f" alternated downloads, load {record.load_average()[0]:.2f}"
    )
    print_table(["path", "rows/s", "vs ceiling", "wire bytes/row", "daemon CPU s/1M rows"], table)
    fewer = median(per_row("none")) / median(per_row("zstd"))
    rounds = [n / z for n, z in zip(per_row("none"), per_row("zstd"), strict=True)]
    cost = f"{median(cpu('zstd')) - median(cpu('none')):+.2f}" if cpu("zstd") else "unknown"
    print(
        f"{shape.name}: zstd sends {fewer:.2f}x fewer wire bytes per row"
        f" (per round {', '.join(f'{x:.2f}x' for x in rounds)}),"
        f" daemon CPU {cost} s per million rows"
    )


async def main_async(
    pg: PgServer, endpoint: Endpoint, args: argparse.Namespace, pid: int | None
) -> None:
    if args.compression:
        for shape in args.shapes:
            for rows in args.sizes:
                await compression(pg, endpoint, shape, rows, pid)
        return
    with tempfile.TemporaryDirectory(prefix="syncd-firstsync-") as tmp:
        folder = Path(tmp)
        for shape in args.shapes:
            for rows in args.sizes:
                await one_size(pg, endpoint, shape, rows, pid, folder)
        if args.shaped_rows:
            link = Link.of(args.mbit, args.rtt_ms)
            await shaped(endpoint, "shaped", args.shaped_rows, link, pid, folder)


def _shapes(text: str) -> list[Shape]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown row shape {', '.join(unknown) or repr(text)}; known: {', '.join(SHAPES)}"
        )
    return [SHAPES[n] for n in names]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", default="1000000,3000000", help="comma-separated sizes")
    parser.add_argument("--shaped-rows", type=int, default=200_000, help="0 skips the shaped run")
    parser.add_argument(
        "--shape",
        dest="shapes",
        type=_shapes,
        default=[SHAPES["narrow"]],
        help=f"comma-separated row shapes of bench/shapes.py ({', '.join(SHAPES)}; default narrow)",
    )
    parser.add_argument("--mbit", type=float, default=20.0)
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--codecs", action="store_true", help="only the codec micro-measure")
    only.add_argument(
        "--compression",
        action="store_true",
        help="only compression: the codec micro-measure, then each shape's downloads"
        " with and without zstd",
    )
    only.add_argument(
        "--feed-options", action="store_true", help="only the server read shapes, first size"
    )
    parser.add_argument(
        "--codec-rows",
        type=int,
        default=framecodecs.DEFAULT_ROWS,
        help="rows per shape of the codec micro-measure",
    )
    args = parser.parse_args(argv)
    args.sizes = [int(n) for n in args.rows.split(",") if n]
    return args


def _orgs(args: argparse.Namespace) -> Iterator[tuple[str, int, Shape]]:
    for shape in args.shapes:
        for rows in args.sizes:
            yield org_for(shape, rows), rows, shape
    if args.shaped_rows:
        yield "shaped", args.shaped_rows, args.shapes[0]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    with record.bench_run("firstsync", argv):
        if args.codecs or args.compression:
            framecodecs.codecs([s.name for s in args.shapes], args.codec_rows)
            if args.codecs:
                return
            args.shaped_rows = 0
        with embedded_server() as pg:

            async def prepare() -> None:
                for org, rows, shape in _orgs(args):
                    await load(pg, org, rows, shape)

            if args.feed_options:
                args.shapes, args.sizes, args.shaped_rows = args.shapes[:1], args.sizes[:1], 0
            uvloop.run(prepare())
            if args.feed_options:
                shape = args.shapes[0]
                uvloop.run(feed_options(pg, org_for(shape, args.sizes[0]), model_for(shape)))
                return
            daemon = DaemonProcess(pg)
            with daemon as endpoint:
                try:
                    uvloop.run(main_async(pg, endpoint, args, daemon.pid))
                except BaseException:
                    print(f"--- daemon log tail ---\n{daemon.log_tail()}")
                    raise


if __name__ == "__main__":
    main()
