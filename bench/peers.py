"""Peers side by side, on the same rows: what a team would otherwise pick, in the same run.

Strategy. The same CRM rows (`bench.common.crm_rows`, same seed) go to every system, and
every comparison is measured `--rounds` times alternating which side goes first; each
syncd figure is recorded with the peer's as its ceiling, so its ratio (syncd / peer) comes
from the same run and the same rows.

* **pouchdb-server** (the CouchDB replication protocol; npm `pouchdb-server`, run
  `--in-memory` so its storage is not the bottleneck): the rows are loaded as documents
  through `_bulk_docs`, then
  (a) *receive only*: a Python client pulls `_changes?include_docs=true` in batches and
  decodes them, against syncd's protocol-level device (`bench.sync.WireDevice`);
  (b) *durable*: a real PouchDB replication (npm `pouchdb`, `bench/peers_js/replicate.js`)
  into a local LevelDB database, against syncd's SDK committing into SQLite.
  The packages are installed by this bench with npm into a cache directory under the
  bench's work dir (`bench/.cache/npm`, or `$SYNCD_BENCH_NPM_CACHE`); only the npm registry
  is needed. Without node or npm on PATH the peer is skipped with a message saying so.
* **direct PostgreSQL** (no sync server: every device holds a connection and polls its
  filtered SELECT): for N devices each with an asyncpg connection polling
  `WHERE owner_id = $1 AND seq > $2` every `--poll` seconds while a writer commits
  single-row INSERTs, it records how many connections PostgreSQL refused (its
  `max_connections`), the commit-to-seen latency, PostgreSQL's CPU and memory per device;
  against syncd holding the same N devices live (an owner filter, so each sees its own
  rows), with the daemon's CPU and memory per device.

    python -m bench.peers [--rows N] [--rounds N] [--devices 10,50,100,200]
                          [--only pouchdb,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import orjson
import psutil
import uvloop

from bench import progress, record
from bench.common import (
    CRM_MODEL,
    DaemonProcess,
    Endpoint,
    PgServer,
    cpu_seconds,
    crm_rows,
    embedded_server,
    load_org,
    postgres_cpu_seconds,
    postgres_processes,
    print_table,
    rss_bytes,
    with_database,
)
from bench.latency import CELL_HEADERS, Latency, summarize
from bench.sync import NAME_INDEX, Countdown, Cpu, Rate, WireDevice, sqlite_download, wire_download
from protocol import Changes
from syncd.store.sql import database_name

NPM_PACKAGES: Final = {"pouchdb-server": "4.2.0", "pouchdb": "9.0.0"}
NPM_CACHE_ENV: Final = "SYNCD_BENCH_NPM_CACHE"
JS_DIR: Final = Path(__file__).resolve().parent / "peers_js"
NPM_DEADLINE_S: Final = 900.0
START_DEADLINE_S: Final = 60.0
BULK: Final = 1000
LIVE_PREFIX: Final = "peer "
GRACE_S: Final = 15.0
PG_DB: Final = "peer_pg"
ORG_ROWS: Final = "peers"
ORG_LIVE: Final = "peers-live"


def npm_cache() -> Path:
    default = Path(__file__).resolve().parent / ".cache" / "npm"
    return Path(os.environ.get(NPM_CACHE_ENV) or default)


def node_missing() -> str | None:
    """Why the node peers cannot run here, or None when node and npm are on PATH."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found on PATH; install Node.js 20+ with npm"
            " (e.g. apt-get install nodejs npm) to compare with pouchdb-server"
        )
    return None


def node_version() -> str:
    done = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def ensure_packages(cache: Path) -> Path:
    """npm-install the peers' packages into `cache` (once; kept between runs)."""
    modules = cache / "node_modules"
    wanted = [f"{name}@{version}" for name, version in NPM_PACKAGES.items()]
    if all(_installed(modules, name) == version for name, version in NPM_PACKAGES.items()):
        return modules
    cache.mkdir(parents=True, exist_ok=True)
    print(f"npm install {' '.join(wanted)} into {cache} (first run only, a few minutes)")
    with progress.bar("npm install", None, "steps"):
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
             "--prefix", str(cache), *wanted],
            capture_output=True, text=True, timeout=NPM_DEADLINE_S, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"npm install failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return modules


def _installed(modules: Path, name: str) -> str | None:
    try:
        return str(orjson.loads((modules / name / "package.json").read_bytes())["version"])
    except (OSError, KeyError, orjson.JSONDecodeError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def crm_docs(count: int) -> Iterator[dict[str, Any]]:
    """The bench's CRM rows as documents, in the values syncd sends (uuid and numeric as
    text, timestamps as integer microseconds), so both sides carry the same payload."""
    for row in crm_rows(count):
        key, owner, name, city, amount, modified, status = row
        yield {
            "_id": str(key),
            "owner_id": owner,
            "name": name,
            "city": city,
            "amount": str(amount),
            "modified_at": int(modified.timestamp() * 1_000_000),
            "status": status,
        }


class PouchServer:
    """`pouchdb-server --in-memory` on a free loopback port, in a scratch directory."""

    def __init__(self, modules: Path, workdir: Path) -> None:
        self.modules = modules
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> PouchServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        script = self.modules / "pouchdb-server" / "bin" / "pouchdb-server"
        self._log = (self.workdir / "pouchdb-server.out").open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            "node", str(script), "--in-memory", "--port", str(self.port),
            "--host", "127.0.0.1", "--no-stdout-logs",
            cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_DEADLINE_S
        async with aiohttp.ClientSession() as http:
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"pouchdb-server exited: see {self.workdir}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url) as resp:
                        if resp.status == 200:
                            return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pouchdb-server did not answer in {START_DEADLINE_S} s")
                await asyncio.sleep(0.2)  # polling a starting server's port

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def __aexit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._log.close()


async def load_pouch(http: aiohttp.ClientSession, url: str, rows: int) -> float:
    """Create the database and `_bulk_docs` the rows in; returns seconds."""
    started = time.perf_counter()
    async with http.put(url) as resp:
        if resp.status not in (201, 412):
            raise RuntimeError(f"PUT {url}: {resp.status} {await resp.text()}")
    docs = crm_docs(rows)
    with progress.bar("loading pouchdb-server by _bulk_docs", rows) as bar:
        while chunk := [d for _, d in zip(range(BULK), docs, strict=False)]:
            body = orjson.dumps({"docs": chunk})
            headers = {"Content-Type": "application/json"}
            async with http.post(f"{url}/_bulk_docs", data=body, headers=headers) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"_bulk_docs: {resp.status} {await resp.text()}")
            bar.advance(len(chunk))
    return time.perf_counter() - started


async def pouch_changes(
    http: aiohttp.ClientSession, url: str, batch: int, server_pid: int | None
) -> Rate:
    """Receive only: `_changes?include_docs=true` in batches until the feed is drained."""
    since: object = 0
    rows = 0
    t0, cpu0, own0 = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    async with progress.polled("pouchdb _changes receiving", lambda: rows):
        while True:
            params = {"include_docs": "true", "limit": str(batch), "since": str(since)}
            async with http.get(f"{url}/_changes", params=params) as resp:
                body = orjson.loads(await resp.read())
            results = body["results"]
            if not results:
                break
            rows += sum(1 for r in results if "doc" in r)
            since = body["last_seq"]
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(server_pid)
    server = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    cpu = Cpu(server, (time.process_time() - own0) / wall, 0.0)
    return Rate("pouchdb-server _changes?include_docs=true", rows, wall, cpu)


async def pouch_replicate(
    modules: Path, url: str, batch: int, server_pid: int | None, rows: int
) -> Rate:
    """A real PouchDB replication into a fresh local LevelDB database (durable)."""
    with tempfile.TemporaryDirectory(prefix="syncd-bench-pouch-") as tmp:
        env = {**os.environ, "NODE_PATH": str(modules)}
        cpu0 = cpu_seconds(server_pid)
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "node", str(JS_DIR / "replicate.js"), url, str(Path(tmp) / "local"), str(batch),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        with progress.bar(f"PouchDB replicating {rows:,} docs into LevelDB", None, ""):
            out, err = await proc.communicate()
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds(server_pid)
    if proc.returncode != 0:
        raise RuntimeError(f"replicate.js failed: {err.decode(errors='replace')[-2000:]}")
    result = orjson.loads(out.splitlines()[-1])
    if result["doc_count"] != rows:
        raise AssertionError(f"PouchDB holds {result['doc_count']} docs, {rows} were sent")
    seconds = float(result["seconds"])
    server = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    # "bench" here is the node process doing the replication: the device's side.
    cpu = Cpu(server, float(result["cpu_seconds"]) / seconds, 0.0)
    return Rate("PouchDB replication into LevelDB", int(result["doc_count"]), seconds, cpu)


async def _alternating(
    rounds: int, ours: Callable[[], Awaitable[Rate]], theirs: Callable[[], Awaitable[Rate]]
) -> tuple[list[Rate], list[Rate]]:
    mine: list[Rate] = []
    peer: list[Rate] = []
    for r in range(rounds):
        if r % 2:
            peer.append(await theirs())
            mine.append(await ours())
        else:
            mine.append(await ours())
            peer.append(await theirs())
    return mine, peer


def _record_pair(
    kind: str, peer: str, mine: list[Rate], theirs: list[Rate], rows: int
) -> tuple[record.Figure, record.Figure]:
    """The peer's figure and syncd's, whose ceiling is the peer: ratio = syncd / peer."""
    run = record.current()
    params = {"rows": rows, "kind": kind}
    cpu = Cpu.median([r.cpu for r in theirs if r.cpu])
    other = run.figure(
        f"{kind}: {theirs[0].label}", "rows/s", [r.per_second for r in theirs],
        cpu={peer: cpu.daemon, "client": cpu.bench}, params=params, phase=kind, peer=peer,
    )  # fmt: skip
    ours = run.figure(
        f"{kind}: syncd, {mine[0].label}", "rows/s", [r.per_second for r in mine],
        ceiling_samples=[r.per_second for r in theirs], ceiling_name=other.name,
        cpu=Cpu.median([r.cpu for r in mine if r.cpu]).as_dict(), params=params,
        phase=kind, peer="syncd",
    )  # fmt: skip
    return other, ours


async def run_pouch(
    pg: PgServer, endpoint: Endpoint, daemon_pid: int | None, args: argparse.Namespace
) -> None:
    reason = node_missing()
    if reason is not None:
        record.current().skip("pouchdb-server", reason)
        return
    record.current().note("node", node_version())
    modules = ensure_packages(npm_cache())
    async with PouchServer(modules, pg.base / "pouchdb") as server, aiohttp.ClientSession() as http:
        url = f"{server.url}/crm"
        seconds = await load_pouch(http, url, args.rows)
        print(f"loaded pouchdb-server: {args.rows:,} docs by _bulk_docs in {seconds:.1f} s")
        figures: list[record.Figure] = []
        mine, theirs = await _alternating(
            args.rounds,
            lambda: wire_download(endpoint, pg, ORG_ROWS, 1, daemon_pid, args.rows),
            lambda: pouch_changes(http, url, args.batch, server.pid),
        )
        figures += _record_pair("receive only", "pouchdb-server", mine, theirs, args.rows)
        mine, theirs = await _alternating(
            args.rounds,
            lambda: sqlite_download(endpoint, pg, ORG_ROWS, 1, daemon_pid),
            lambda: pouch_replicate(modules, url, args.batch, server.pid, args.rows),
        )
        figures += _record_pair("durable", "pouchdb-server", mine, theirs, args.rows)
    print(f"\npouchdb-server vs syncd, {args.rows:,} rows to one device, {args.rounds} rounds")
    print_table(
        ["path", "rows/s (median)", "min-max", "syncd / peer", "server CPU", "device CPU"],
        [_peer_row(f) for f in figures],
    )


def _peer_row(f: record.Figure) -> list[object]:
    ratio = "" if f.ratio is None else f"{f.ratio:.2f}x"
    # syncd's figures name the daemon and the bench process; the peer's its server and client.
    server = f.cpu.get("daemon", f.cpu.get(f.peer or ""))
    device = f.cpu.get("bench", f.cpu.get("client"))
    return [
        f.name, f.value, f"{min(f.samples):,.0f}-{max(f.samples):,.0f}", ratio,
        "-" if server is None else f"{server:.0%}", "-" if device is None else f"{device:.0%}",
    ]  # fmt: skip


# --- direct PostgreSQL ----------------------------------------------------------------------


@dataclass
class Held:
    """N devices held live by one side: what was refused, the latency, CPU and memory."""

    side: str
    devices: int
    connected: int
    refused: int
    first_refusal: str | None
    latency: Latency
    expected: int
    server_cpu: float | None
    memory_per_device_kib: float | None


async def _pg_prepare(pg: PgServer, rows: int) -> str:
    """A plain table of the same rows, a sequence to poll on, an index for the poll."""
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{PG_DB}"')
    finally:
        await admin.close()
    dsn = with_database(pg.dsn, PG_DB)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE account (id uuid PRIMARY KEY, owner_id integer, name text, city text,"
            " amount numeric, modified_at timestamptz, status integer,"
            " seq bigserial NOT NULL)"
        )
        await conn.copy_records_to_table(
            "account",
            records=list(crm_rows(rows)),
            columns=["id", "owner_id", "name", "city", "amount", "modified_at", "status"],
        )
        await conn.execute("CREATE INDEX ON account (owner_id, seq)")
        await conn.execute("VACUUM ANALYZE account")
    finally:
        await conn.close()
    return dsn


def _pg_memory(pg: PgServer) -> int:
    """Private memory (USS) of the server's processes: what each new backend adds."""
    total = 0
    for proc in postgres_processes(pg):
        with contextlib.suppress(psutil.Error):
            total += int(proc.memory_full_info().uss)
    return total


async def held_by_postgres(
    pg: PgServer, dsn: str, devices: int, changes: int, rate: float, poll: float
) -> Held:
    """`devices` asyncpg connections, each polling its owner's new rows every `poll` s."""
    # The writer (the ingest side) connects first: past max_connections it is the devices
    # that PostgreSQL turns away, not the data coming in.
    writer = await asyncpg.connect(dsn)
    mem0 = _pg_memory(pg)
    conns: list[asyncpg.Connection] = []
    refused = 0
    first: str | None = None
    with progress.bar(f"PostgreSQL: {devices} devices connecting", devices, "devices") as bar:
        for _ in range(devices):
            try:
                conns.append(await asyncpg.connect(dsn, timeout=10))
            except (asyncpg.PostgresError, OSError, TimeoutError) as e:
                refused += 1
                first = first or f"{type(e).__name__}: {e}"
            bar.advance()
    mem1 = _pg_memory(pg)
    committed: dict[int, float] = {}
    # (change, arrival): the latency is taken after the run, since on loopback a change can
    # arrive before the writer's task has resumed from its COMMIT and noted the time.
    seen: list[tuple[int, float]] = []
    arrived = Countdown(changes if conns else 0)
    select = (
        "SELECT id::text, owner_id, name, city, amount::text, modified_at, status, seq"
        " FROM account WHERE owner_id = $1 AND seq > $2 ORDER BY seq"
    )

    async def device(conn: asyncpg.Connection, owner: int) -> None:
        last = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM account") or 0)
        while True:
            rows = await conn.fetch(select, owner, last)
            now = time.perf_counter()
            for row in rows:
                last = max(last, int(row["seq"]))
                name = str(row["name"])
                if name.startswith(LIVE_PREFIX):
                    n = int(name[len(LIVE_PREFIX) :])
                    seen.append((n, now))
                    arrived.tick()
            await asyncio.sleep(poll)  # the polling interval is what this peer is

    pollers = [asyncio.create_task(device(c, i)) for i, c in enumerate(conns)]
    pg0, t0 = postgres_cpu_seconds(pg), time.perf_counter()
    expected = 0
    try:
        if conns:
            # One poll round first: every device has read its starting point.
            await asyncio.sleep(poll * 2)  # let every poller take its first snapshot
            for n in range(changes):
                delay = t0 + poll * 2 + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronizing
                owner = n % len(conns)
                await writer.execute(
                    "INSERT INTO account (id, owner_id, name, city, amount, modified_at, status)"
                    " VALUES ($1, $2, $3, 'Oslo', 1, now(), 0)",
                    uuid.uuid4(), owner, f"{LIVE_PREFIX}{n}",
                )  # fmt: skip
                committed[n] = time.perf_counter()
            expected = changes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GRACE_S + poll):
                    await arrived.done.wait()
    finally:
        wall = time.perf_counter() - t0
        pg_cpu = (postgres_cpu_seconds(pg) - pg0) / wall
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        await writer.close()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    memory = (mem1 - mem0) / len(conns) / 1024 if conns else None
    latency = summarize((at - committed[n]) * 1000 for n, at in seen if n in committed)
    return Held("direct PostgreSQL", devices, len(conns), refused, first, latency,
                expected, pg_cpu, memory)  # fmt: skip


async def held_by_syncd(
    pg: PgServer, endpoint: Endpoint, daemon_pid: int | None, devices: int, changes: int,
    rate: float,
) -> Held:  # fmt: skip
    """The same devices live on syncd (owner filter: each sees its own user's rows)."""
    rss0 = rss_bytes(daemon_pid)
    clients = [WireDevice(endpoint, ORG_LIVE, user=str(i)) for i in range(devices)]
    refused = 0
    first: str | None = None
    live: list[WireDevice] = []
    with progress.bar(f"syncd: {devices} devices connecting", devices, "devices") as bar:
        for d in clients:
            try:
                await d.connect()
                await d.download()
                live.append(d)
            except Exception as e:  # a refusal of any kind is the figure
                refused += 1
                first = first or f"{type(e).__name__}: {e}"
            bar.advance()
    rss1 = rss_bytes(daemon_pid)
    committed: dict[int, float] = {}
    # (change, arrival): the latency is taken after the run, since on loopback a change can
    # arrive before the writer's task has resumed from its COMMIT and noted the time.
    seen: list[tuple[int, float]] = []
    arrived = Countdown(changes if live else 0)

    async def listen(device: WireDevice) -> None:
        while True:
            message = await device.next()
            if isinstance(message, Changes):
                now = time.perf_counter()
                for row in message.upserts:
                    name = row[NAME_INDEX]
                    if isinstance(name, str) and name.startswith(LIVE_PREFIX):
                        n = int(name[len(LIVE_PREFIX) :])
                        seen.append((n, now))
                        arrived.tick()

    listeners = [asyncio.create_task(listen(d)) for d in live]
    writer = await asyncpg.connect(with_database(pg.dsn, database_name(ORG_LIVE)))
    cpu0, t0 = cpu_seconds(daemon_pid), time.perf_counter()
    try:
        for n in range(changes):
            delay = t0 + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronizing
            await writer.execute(
                "INSERT INTO account (id, owner_id, name, city, amount, modified_at, status)"
                " VALUES ($1, $2, $3, 'Oslo', 1, $4, 0)",
                uuid.uuid4(), n % max(1, len(live)), f"{LIVE_PREFIX}{n}", datetime.now(UTC),
            )  # fmt: skip
            committed[n] = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GRACE_S):
                await arrived.done.wait()
    finally:
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds(daemon_pid)
        await writer.close()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in live))
    cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    memory = None if rss0 is None or rss1 is None or not live else (rss1 - rss0) / len(live) / 1024
    latency = summarize((at - committed[n]) * 1000 for n, at in seen if n in committed)
    return Held("syncd", devices, len(live), refused, first, latency, changes, cpu,
                memory)  # fmt: skip


def _record_held(h: Held) -> None:
    run = record.current()
    peer = "syncd" if h.side == "syncd" else "postgresql"
    params = {"devices": h.devices, "connected": h.connected, "refused": h.refused,
              "first_refusal": h.first_refusal, "delivered": h.latency.count,
              "expected": h.expected, "server_cpu": h.server_cpu}  # fmt: skip
    if h.latency.count:
        run.figure(f"held live: {h.side}, commit-to-seen p99, {h.devices} devices", "ms",
                   [h.latency.p99], higher_is_better=False, latency=h.latency,
                   cpu={"server": h.server_cpu}, params=params, phase="held live",
                   peer=peer)  # fmt: skip
    if h.memory_per_device_kib is not None:
        run.figure(f"held live: {h.side}, memory per device, {h.devices} devices", "KiB",
                   [h.memory_per_device_kib], higher_is_better=False, params=params,
                   phase="memory per device", peer=peer)  # fmt: skip
    run.figure(f"held live: {h.side}, devices refused, {h.devices} devices", "devices",
               [h.refused], higher_is_better=False, params=params, phase="held live",
               peer=peer)  # fmt: skip


async def run_postgres(
    pg: PgServer, endpoint: Endpoint, daemon_pid: int | None, args: argparse.Namespace
) -> None:
    dsn = await _pg_prepare(pg, args.live_rows)
    admin = await asyncpg.connect(pg.dsn)
    try:
        max_connections = int(await admin.fetchval("SHOW max_connections"))
    finally:
        await admin.close()
    print(f"\nPostgreSQL max_connections = {max_connections} (syncd's pool: 16 connections)")
    results: list[Held] = []
    for n in [int(x) for x in args.devices.split(",")]:
        mine = await held_by_syncd(pg, endpoint, daemon_pid, n, args.changes, args.rate)
        theirs = await held_by_postgres(pg, dsn, n, args.changes, args.rate, args.poll)
        for h in (theirs, mine):
            _record_held(h)
            results.append(h)
    print(
        f"\nN devices held live: {args.changes} single-row commits at {args.rate:g}/s;"
        f" direct PostgreSQL polls every {args.poll:g} s"
    )
    print_table(
        ["side", "devices", "connected", "refused", "delivered", *CELL_HEADERS, "server CPU",
         "KiB/device"],
        [[h.side, h.devices, h.connected, h.refused, f"{h.latency.count}/{h.expected}",
          *h.latency.cells(), "-" if h.server_cpu is None else f"{h.server_cpu:.0%}",
          "-" if h.memory_per_device_kib is None else f"{h.memory_per_device_kib:,.0f}"]
         for h in results],
    )  # fmt: skip
    for h in results:
        if h.first_refusal:
            print(f"{h.side} at {h.devices} devices refused {h.refused}: {h.first_refusal}")


OWNER_MODEL: Final[dict[str, Any]] = {
    **CRM_MODEL,
    "profiles": {
        "sales": {"offline": True, "entities": {"account": {"filter": {"owner": "owner_id"}}}}
    },
}


async def prepare(pg: PgServer, args: argparse.Namespace, only: set[str]) -> None:
    if "pouchdb" in only:
        await load_org(pg, ORG_ROWS, args.rows)
    await load_org(pg, ORG_LIVE, args.live_rows if "postgres" in only else 0, model=OWNER_MODEL)


async def run(
    pg: PgServer, endpoint: Endpoint, daemon_pid: int | None, args: argparse.Namespace,
    only: set[str],
) -> None:  # fmt: skip
    if "pouchdb" in only:
        await run_pouch(pg, endpoint, daemon_pid, args)
    if "postgres" in only:
        await run_postgres(pg, endpoint, daemon_pid, args)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="rows to one device")
    parser.add_argument("--rounds", type=int, default=3, help="alternating repeats")
    parser.add_argument("--batch", type=int, default=1000, help="_changes / replication batch")
    parser.add_argument("--devices", default="10,50,100,200", help="devices held live")
    parser.add_argument("--changes", type=int, default=40, help="live commits per N")
    parser.add_argument("--rate", type=float, default=10.0, help="live commits per second")
    parser.add_argument("--poll", type=float, default=1.0, help="direct PostgreSQL poll, s")
    parser.add_argument("--live-rows", type=int, default=10_000, help="rows of the live table")
    parser.add_argument("--only", default="pouchdb,postgres", help="subset of pouchdb,postgres")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    with record.bench_run("peers", argv), embedded_server("syncd-peers-") as pg:
        uvloop.run(prepare(pg, args, only))
        daemon = DaemonProcess(pg)
        with daemon as endpoint:
            try:
                uvloop.run(run(pg, endpoint, daemon.pid, args, only))
            except BaseException:
                print(f"--- daemon log tail ---\n{daemon.log_tail()}")
                raise


if __name__ == "__main__":
    main()
