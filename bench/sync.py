"""End-to-end sync figures (issue 4, section 8): PostgreSQL -> syncd -> TLS -> devices.

Strategy. One embedded PostgreSQL holds three orgs of CRM rows loaded by COPY before the
daemon starts: `one` (the 1-device initial sync), `many` (the N-device initial sync) and
`live` (a small org whose devices stay connected). The daemon runs in a subprocess, so it
has a Python core of its own; devices, the ceiling and the writer run in this process
(`--in-process` puts the daemon in this loop too, for cProfile-free comparisons).

Each figure is printed next to what bounds it, measured in the same run:

* ceiling: asyncpg fetching the same rows with the feed's own select list (the same
  SQL-side casts to primitives), through a server-side cursor in 10,000-row fetches;
* received: `WireDevice`, a protocol-level device (protocol.Connection over TLS, decode
  only, acks every checkpoint): what the daemon can push;
* committed: the real `SyncClient` + `LocalDB`: rows durably in SQLite, checkpoint included;
* live: devices stay connected after catching up while a writer commits single-row
  INSERTs at a steady rate through asyncpg; the latency of each (device, change) pair is
  its arrival (decoded on the device) minus the moment the writer's COMMIT returned.

Daemon CPU is read from /proc around each phase: 100% means its one core was saturated.

    python -m bench.sync [--full] [--rows N] [--devices N] [--device-rows N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Final

import asyncpg
import uvloop

from bench import progress, record
from bench.common import (
    CRM_MODEL,
    DaemonProcess,
    Endpoint,
    PgServer,
    cpu_seconds,
    embedded_server,
    in_process_daemon,
    load_org,
    postgres_cpu_seconds,
    print_table,
    rss_bytes,
    with_database,
)
from bench.latency import CELL_HEADERS, summarize
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
    Message,
    Ping,
    Pong,
    Role,
    Welcome,
)
from syncd.client import LocalDB
from syncd.client.session import SyncClient, SyncStats
from syncd.model import ClientModel
from syncd.store.feed import wire_select_list
from syncd.store.sql import database_name

READ_CHUNK: Final = 256 * 1024
CEILING_FETCH: Final = 10_000
# Column of "name" in the CRM wire row (model order: id, owner_id, name, ...).
NAME_INDEX: Final = 2
LIVE_PREFIX: Final = "live "
# Rows every phase may take per second at worst before it is declared stuck: far below
# any figure this machine produces, so only a hang trips it.
MIN_RATE: Final = 5_000
# How long the last live change may take to reach every device before it counts as lost.
LIVE_GRACE_S: Final = 10.0
WARM_UP: Final = -1


class WireError(Exception):
    """The daemon ended a bench device's session with an Error frame."""


@dataclass
class WireDevice:
    """A device that only speaks the protocol: decode frames, count rows, ack, answer pings."""

    endpoint: Endpoint
    org: str
    user: str = "1"
    conn: Connection = field(default_factory=lambda: Connection(Role.DEVICE))
    rows: int = 0
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    async def connect(self) -> Welcome:
        self._reader, self._writer = await asyncio.open_connection(
            self.endpoint.host,
            self.endpoint.port,
            ssl=self.endpoint.ssl_context(),
            server_hostname="localhost",
            limit=READ_CHUNK,
        )
        hello = Hello((1,), self.endpoint.token(self.org, self.user), self.org,
                      uuid.uuid4().hex, "bench/wire")  # fmt: skip
        self._send(hello)
        welcome = await self.next()
        if not isinstance(welcome, Welcome):
            raise WireError(f"expected Welcome, got {welcome!r}")
        return welcome

    async def next(self) -> Message:
        """The next message, after answering what the protocol requires of a device."""
        assert self._reader is not None
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(await self._reader.read(READ_CHUNK))
                continue
            if isinstance(event, ConnectionClosed):
                raise ConnectionResetError("the daemon closed the connection")
            if isinstance(event, Error):
                raise WireError(f"{event.code.name}: {event.message}")
            assert isinstance(event, Message)
            if isinstance(event, Changes):
                self.rows += len(event.upserts) + len(event.deletes)
            elif isinstance(event, Checkpoint | CaughtUp):
                self._send(Ack(checkpoint=event.token))
            elif isinstance(event, Ping):
                self._send(Pong(nonce=event.nonce))
            return event

    async def download(self) -> int:
        """Read until CaughtUp; returns rows received."""
        while not isinstance(await self.next(), CaughtUp):
            pass
        return self.rows

    def _send(self, message: Message) -> None:
        assert self._writer is not None
        # Acks and pongs are tiny and rare: the transport buffers them without a drain.
        self._writer.write(self.conn.send(message))

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with contextlib.suppress(Exception):
            writer.write(self.conn.send(Goodbye(reason="bench done")))
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await writer.wait_closed()


# --- measurements -------------------------------------------------------------------------


@dataclass
class Rate:
    label: str
    rows: int
    seconds: float
    cpu: Cpu | None = None

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Cpu:
    """Share of one core used during a phase: 1.0 is a saturated Python process."""

    daemon: float | None
    bench: float
    postgres: float

    def cells(self) -> list[str]:
        daemon = "-" if self.daemon is None else f"{self.daemon:.0%}"
        return [daemon, f"{self.bench:.0%}", f"{self.postgres:.0%}"]

    def as_dict(self) -> dict[str, float | None]:
        return {"daemon": self.daemon, "bench": self.bench, "postgres": self.postgres}

    @staticmethod
    def median(cpus: Sequence[Cpu]) -> Cpu:
        """Each process's median share over repeats of one phase."""
        daemons = [c.daemon for c in cpus if c.daemon is not None]
        return Cpu(
            statistics.median(daemons) if daemons else None,
            statistics.median(c.bench for c in cpus),
            statistics.median(c.postgres for c in cpus),
        )


CPU_HEADERS: Final = ["daemon CPU", "bench CPU", "pg CPU"]


class Phase:
    """Wall time and CPU (daemon, this process, PostgreSQL) over a `with` block."""

    def __init__(self, pg: PgServer, daemon_pid: int | None) -> None:
        self._pg = pg
        self._pid = daemon_pid
        self.seconds = 0.0
        self.cpu = Cpu(None, 0.0, 0.0)

    def __enter__(self) -> Phase:
        self._t = time.perf_counter()
        self._start = (cpu_seconds(self._pid), time.process_time(), postgres_cpu_seconds(self._pg))
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = wall = time.perf_counter() - self._t
        if wall <= 0:
            return
        daemon0, bench0, pg0 = self._start
        daemon1 = cpu_seconds(self._pid)
        daemon = None if daemon0 is None or daemon1 is None else (daemon1 - daemon0) / wall
        bench = (time.process_time() - bench0) / wall
        self.cpu = Cpu(daemon, bench, (postgres_cpu_seconds(self._pg) - pg0) / wall)


async def ceiling(pg: PgServer, org: str) -> Rate:
    """asyncpg reading the org's rows with the feed's casts, streamed, nothing kept."""
    entity = ClientModel.parse(CRM_MODEL).entity("account")
    sql = f"SELECT {wire_select_list(entity, 't')} FROM account t"
    conn = await asyncpg.connect(with_database(pg.dsn, database_name(org)))
    try:
        rows = 0
        started = time.perf_counter()
        async with conn.transaction():
            cursor = await conn.cursor(sql)
            while batch := await cursor.fetch(CEILING_FETCH):
                rows += len(batch)
        return Rate("asyncpg ceiling (same casts)", rows, time.perf_counter() - started)
    finally:
        await conn.close()


async def wire_download(
    endpoint: Endpoint, pg: PgServer, org: str, devices: int, pid: int | None,
    total_rows: int | None = None,
) -> Rate:  # fmt: skip
    """`devices` protocol-level devices download the whole org at once; aggregate rows/s."""
    clients = [WireDevice(endpoint, org, user=str(i)) for i in range(devices)]

    async def one(device: WireDevice) -> int:
        try:
            await device.connect()
            return await device.download()
        finally:
            await device.close()

    what = f"{devices} wire device{'s' if devices > 1 else ''} receiving"
    async with progress.polled(what, lambda: sum(d.rows for d in clients), total_rows):
        with Phase(pg, pid) as phase:
            counts = await asyncio.gather(*(one(d) for d in clients))
    label = f"received, {devices} wire device{'s' if devices > 1 else ''}"
    return Rate(label, sum(counts), phase.seconds, phase.cpu)


async def sqlite_download(
    endpoint: Endpoint, pg: PgServer, org: str, devices: int, pid: int | None
) -> Rate:
    """`devices` real SyncClients download the org into their own SQLite files."""
    with tempfile.TemporaryDirectory(prefix="syncd-bench-dev-") as tmp:
        dbs = [LocalDB.open(Path(tmp) / f"d{i}.sqlite") for i in range(devices)]
        try:
            clients = [
                SyncClient(
                    db,
                    host=endpoint.host,
                    port=endpoint.port,
                    ssl_context=endpoint.ssl_context(),
                    server_hostname="localhost",
                    token=endpoint.token(org, str(i)),
                    org=org,
                )
                for i, db in enumerate(dbs)
            ]
            done = [0]

            async def one(client: SyncClient) -> SyncStats:
                try:
                    return await client.sync_once()
                finally:
                    done[0] += 1

            what = f"{devices} SyncClient{'s' if devices > 1 else ''} committing into SQLite"
            async with progress.polled(what, lambda: done[0], devices, "devices done"):
                with Phase(pg, pid) as phase:
                    stats = await asyncio.gather(*(one(c) for c in clients))
            committed = sum(s.rows_applied for s in stats)
            stored = sum(db.count("account") for db in dbs)
            if stored != committed:
                raise AssertionError(f"SQLite holds {stored} rows, {committed} were applied")
        finally:
            for db in dbs:
                db.close()
    label = f"committed, {devices} SyncClient{'s' if devices > 1 else ''}"
    return Rate(label, committed, phase.seconds, phase.cpu)


@dataclass
class LiveResult:
    devices: int
    changes: int
    """Changes committed per round."""
    rounds: list[list[float]]
    """Per round: milliseconds from a change's COMMIT returning to its arrival, per delivery."""
    cpu: Cpu

    @property
    def latencies_ms(self) -> list[float]:
        return [ms for one in self.rounds for ms in one]


async def live_latency(
    endpoint: Endpoint, pg: PgServer, org: str, devices: int, rate: float, seconds: float,
    pid: int | None, rounds: int = 1,
) -> LiveResult:  # fmt: skip
    """Connected devices, a steady single-row writer, arrival minus COMMIT-returned.

    The devices connect once; the writer then runs `rounds` times, each round waiting until
    every device saw every change of the round (or the grace ran out), so each round's
    percentiles are one sample of the figure's spread."""
    total = int(rate * seconds)
    committed: dict[int, float] = {}
    arrivals: list[tuple[int, float]] = []
    warm = Countdown(devices)
    measured = Countdown(total * devices)
    clients = [WireDevice(endpoint, org, user=str(i)) for i in range(devices)]
    caught_up = [0]

    async def listen(device: WireDevice) -> None:
        while True:
            message = await device.next()
            if isinstance(message, Changes):
                now = time.perf_counter()
                for row in message.upserts:
                    name = row[NAME_INDEX]
                    if isinstance(name, str) and name.startswith(LIVE_PREFIX):
                        n = int(name[len(LIVE_PREFIX) :])
                        if n == WARM_UP:
                            warm.tick()
                        else:
                            arrivals.append((n, now))
                            measured.tick()

    async def catch_up(device: WireDevice) -> None:
        await device.connect()
        await device.download()
        caught_up[0] += 1

    listeners: list[asyncio.Task[None]] = []
    writer = await Writer.connect(pg, org)
    cpus: list[Cpu] = []
    rss0 = rss_bytes(pid)
    try:
        async with progress.polled("live devices caught up", lambda: caught_up[0], devices,
                                   "devices"):  # fmt: skip
            await asyncio.gather(*(catch_up(d) for d in clients))
        rss1 = rss_bytes(pid)
        if rss0 is not None and rss1 is not None:
            record.current().figure(
                "daemon memory per live device", "KiB", [(rss1 - rss0) / devices / 1024],
                higher_is_better=False, params={"devices": devices}, phase="live",
            )  # fmt: skip
        listeners = [asyncio.create_task(listen(d)) for d in clients]
        # A device has CaughtUp before its session has joined the live hub; one change that
        # every device receives proves all of them are live, so the figure is live delivery
        # and not the tail of a hundred simultaneous joins.
        await writer.insert(WARM_UP)
        async with asyncio.timeout(LIVE_GRACE_S):
            await warm.done.wait()
        for r in range(rounds):
            measured.reset(total * devices)
            what = f"live round {r + 1}/{rounds}: deliveries"
            async with progress.polled(what, lambda: len(arrivals), total * devices * rounds,
                                       "deliveries"):  # fmt: skip
                with Phase(pg, pid) as phase:
                    await writer.steadily(total, rate, committed, first=r * total)
                    # Every device must see every change; the bound only cuts a lost
                    # delivery short.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LIVE_GRACE_S):
                            await measured.done.wait()
            cpus.append(phase.cpu)
    finally:
        await writer.close()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in clients))
    per_round: list[list[float]] = [[] for _ in range(rounds)]
    for n, at in arrivals:
        if n in committed:
            per_round[n // total].append((at - committed[n]) * 1000)
    return LiveResult(devices, total, per_round, Cpu.median(cpus))


class Countdown:
    """An event set once `tick` was called `count` times."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = asyncio.Event()
        if count <= 0:
            self.done.set()

    def tick(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()

    def reset(self, count: int) -> None:
        self.left = count
        self.done = asyncio.Event()
        if count <= 0:
            self.done.set()


class Writer:
    """The ingest side of the live bench: single-row autocommitted INSERTs into staging."""

    def __init__(self, conn: asyncpg.Connection, insert: asyncpg.PreparedStatement) -> None:
        self._conn = conn
        self._insert = insert

    @classmethod
    async def connect(cls, pg: PgServer, org: str) -> Writer:
        conn = await asyncpg.connect(with_database(pg.dsn, database_name(org)))
        insert = await conn.prepare(
            "INSERT INTO account (id, owner_id, name, city, amount, modified_at, status)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        return cls(conn, insert)

    async def insert(self, n: int) -> float:
        """Commit change `n`; returns when its COMMIT returned (perf_counter)."""
        now = datetime.now(UTC)
        await self._insert.fetch(uuid.uuid4(), 1, f"{LIVE_PREFIX}{n}", "Oslo", Decimal(1), now, 0)
        return time.perf_counter()

    async def steadily(
        self, total: int, rate: float, committed: dict[int, float], first: int = 0
    ) -> None:
        """`total` changes (numbered from `first`) on a fixed schedule of `rate` per second
        (not back to back)."""
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronizing
            committed[first + i] = await self.insert(first + i)

    async def close(self) -> None:
        await self._conn.close()


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    rows: int
    devices: int
    device_rows: int
    live_devices: int
    rate: float
    seconds: float
    sqlite_devices: int


QUICK = Sizes(rows=200_000, devices=10, device_rows=20_000, live_devices=100, rate=20,
              seconds=5, sqlite_devices=10)  # fmt: skip
FULL = Sizes(rows=1_000_000, devices=100, device_rows=100_000, live_devices=100, rate=20,
             seconds=10, sqlite_devices=100)  # fmt: skip


def record_rates(
    phase: str, rounds: list[tuple[Rate, list[Rate]]], params: Mapping[str, object]
) -> list[record.Figure]:
    """One figure per path of a phase: its rows/s in every round against the ceiling's."""
    run = record.current()
    tops = [top for top, _ in rounds]
    figures = []
    for i, first in enumerate(rounds[0][1]):
        paths = [rates[i] for _, rates in rounds]
        cpus = [r.cpu for r in paths if r.cpu is not None]
        figures.append(
            run.figure(
                first.label,
                "rows/s",
                [r.per_second for r in paths],
                ceiling_samples=[t.per_second for t in tops],
                ceiling_name=tops[0].label,
                cpu=Cpu.median(cpus).as_dict() if cpus else {},
                params={**params, "rows": first.rows},
                phase=phase,
            )
        )
    return figures


def _rate_rows(figures: Sequence[record.Figure]) -> list[list[object]]:
    """Median rows/s, its spread over the rounds, and the ratio to the median ceiling."""
    table: list[list[object]] = []
    top = figures[0]
    assert top.ceiling is not None
    spread = f"{min(top.ceiling_samples):,.0f}-{max(top.ceiling_samples):,.0f}"
    table.append([top.ceiling_name, top.params["rows"], top.ceiling, spread, "100%", "", "", ""])
    for f in figures:
        cpu = Cpu(f.cpu.get("daemon"), f.cpu.get("bench") or 0.0, f.cpu.get("postgres") or 0.0)
        spread = f"{min(f.samples):,.0f}-{max(f.samples):,.0f}"
        table.append([f.name, f.params["rows"], f.value, spread, f"{f.ratio:.0%}", *cpu.cells()])
    return table


HEADERS: Final = ["path", "rows", "rows/s (median)", "min-max", "vs ceiling", *CPU_HEADERS]


def _deadline(rows: int) -> float:
    return 60 + rows / MIN_RATE


async def _rounds(
    count: int,
    ceiling_of: Callable[[], Awaitable[Rate]],
    paths: Sequence[Callable[[], Awaitable[Rate]]],
) -> list[tuple[Rate, list[Rate]]]:
    """`count` rounds of the ceiling and the paths, alternating which goes first, so neither
    always finds the other's pages in the cache."""
    out = []
    for r in range(count):
        if r % 2:
            rates = [await p() for p in paths]
            top = await ceiling_of()
        else:
            top = await ceiling_of()
            rates = [await p() for p in paths]
        out.append((top, rates))
    return out


async def run(pg: PgServer, endpoint: Endpoint, sizes: Sizes, pid: int | None,
              phases: set[str], rounds: int = 3) -> None:  # fmt: skip
    if "one" in phases:
        async with asyncio.timeout(_deadline(sizes.rows * 2) * rounds):
            measured = await _rounds(
                rounds,
                lambda: ceiling(pg, "one"),
                [
                    lambda: wire_download(endpoint, pg, "one", 1, pid, sizes.rows),
                    lambda: sqlite_download(endpoint, pg, "one", 1, pid),
                ],
            )
        figures = record_rates("one", measured, {"devices": 1})
        print(f"\nInitial sync, {sizes.rows:,} rows to 1 device, {rounds} rounds")
        print_table(HEADERS, _rate_rows(figures))
    if "many" in phases:
        moved = sizes.device_rows * (sizes.devices + sizes.sqlite_devices)
        paths = [
            lambda: wire_download(
                endpoint, pg, "many", sizes.devices, pid, sizes.devices * sizes.device_rows
            )
        ]
        if sizes.sqlite_devices:
            paths.append(lambda: sqlite_download(endpoint, pg, "many", sizes.sqlite_devices, pid))
        async with asyncio.timeout(_deadline(moved) * rounds):
            measured = await _rounds(rounds, lambda: ceiling(pg, "many"), paths)
        counts = {"devices": sizes.devices, "sqlite_devices": sizes.sqlite_devices}
        figures = record_rates("many", measured, counts)
        print(
            f"\nInitial sync, {sizes.device_rows:,} rows to each of N concurrent devices,"
            f" {rounds} rounds"
        )
        print_table(HEADERS, _rate_rows(figures))
    if "live" in phases:
        async with asyncio.timeout((120 + sizes.seconds) * rounds):
            live = await live_latency(
                endpoint, pg, "live", sizes.live_devices, sizes.rate, sizes.seconds, pid, rounds
            )
        _record_live(live, sizes)


def _record_live(live: LiveResult, sizes: Sizes) -> None:
    expected = live.devices * live.changes * len(live.rounds)
    print(
        f"\nCommit-to-device latency: {live.devices} live devices, {live.changes} single-row"
        f" commits at {sizes.rate:g}/s, {len(live.rounds)} rounds"
    )
    each = [summarize(r) for r in live.rounds]
    whole = summarize(live.latencies_ms)
    rows: list[list[object]] = [
        [f"round {i + 1}", lat.count, live.devices * live.changes, *lat.cells(), *live.cpu.cells()]
        for i, lat in enumerate(each)
    ]
    rows.append(["all", whole.count, expected, *whole.cells(), *live.cpu.cells()])
    print_table(["", "deliveries", "expected", *CELL_HEADERS, *CPU_HEADERS], rows)
    if whole.count == 0:
        return
    record.current().figure(
        f"commit-to-device p99, {live.devices} live devices",
        "ms",
        [lat.p99 for lat in each if lat.count],
        higher_is_better=False,
        cpu=live.cpu.as_dict(),
        latency=whole,
        params={
            "devices": live.devices,
            "changes": live.changes,
            "rate": sizes.rate,
            "deliveries": whole.count,
            "expected": expected,
        },
        phase="live",
    )


async def prepare(pg: PgServer, sizes: Sizes, phases: set[str]) -> None:
    plan = {"one": sizes.rows, "many": sizes.device_rows, "live": 1000}
    for org, rows in plan.items():
        if org in phases or org == "live":
            seconds = await load_org(pg, org, rows if org in phases else 0)
            if org in phases:
                print(f"loaded org {org!r}: {rows:,} rows by COPY in {seconds:.1f} s")


def parse(argv: Sequence[str] | None) -> tuple[Sizes, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (minutes)")
    parser.add_argument("--rows", type=int, help="rows for the 1-device initial sync")
    parser.add_argument("--devices", type=int, help="concurrent wire devices")
    parser.add_argument("--sqlite-devices", type=int, help="concurrent SyncClients (0: skip)")
    parser.add_argument("--device-rows", type=int, help="rows each concurrent device gets")
    parser.add_argument("--live-devices", type=int)
    parser.add_argument("--rate", type=float, help="live commits per second")
    parser.add_argument("--seconds", type=float, help="live writer duration")
    parser.add_argument("--batch-size", type=int, default=1000, help="daemon sync.batch_size")
    parser.add_argument("--phases", default="one,many,live", help="subset of one,many,live")
    parser.add_argument(
        "--rounds", type=int, default=3, help="repeats of each phase (alternating with its ceiling)"
    )
    parser.add_argument("--in-process", action="store_true", help="daemon in this process")
    parser.add_argument("--profile-daemon", type=Path, help="cProfile the daemon into FILE")
    args = parser.parse_args(argv)
    base = FULL if args.full else QUICK
    sizes = Sizes(
        rows=args.rows or base.rows,
        devices=args.devices or base.devices,
        device_rows=args.device_rows or base.device_rows,
        live_devices=args.live_devices or base.live_devices,
        rate=args.rate or base.rate,
        seconds=args.seconds or base.seconds,
        sqlite_devices=base.sqlite_devices if args.sqlite_devices is None else args.sqlite_devices,
    )
    return sizes, args


def main(argv: Sequence[str] | None = None) -> None:
    sizes, args = parse(argv)
    phases = set(args.phases.split(","))
    with record.bench_run("sync", argv), embedded_server() as pg:
        uvloop.run(prepare(pg, sizes, phases))
        where = "in this process" if args.in_process else "in a subprocess"
        print(f"daemon {where}; devices, ceiling and writer in this process; loopback TLS")
        if args.in_process:

            async def inline() -> None:
                async with in_process_daemon(pg, batch_size=args.batch_size) as endpoint:
                    await run(pg, endpoint, sizes, None, phases, args.rounds)

            uvloop.run(inline())
            return
        daemon = DaemonProcess(pg, batch_size=args.batch_size, profile=args.profile_daemon)
        with daemon as endpoint:
            try:
                uvloop.run(run(pg, endpoint, sizes, daemon.pid, phases, args.rounds))
            except BaseException:
                print(f"--- daemon log tail ---\n{daemon.log_tail()}")
                raise
        if args.profile_daemon:
            print(f"daemon profile written to {args.profile_daemon}")


if __name__ == "__main__":
    main()
