"""A fleet on one daemon process (issue 10): how many live devices, at what cost each.

Strategy. The daemon runs in its own process (`bench.common.DaemonProcess`), the devices in
``--workers`` others (`bench.fleet_devices`: protocol-level devices, thousands per loop), and
this process commits the changes and reads every figure next to its same-run ceiling:

* **ceiling**: a bare uvloop TLS echo server (`bench.tls_echo`) takes the same number of
  connections, all at once, from the same device processes: its handshakes/s and resident
  bytes per connection are the floor a TLS device costs on this machine;
* **connect**: ``--devices`` devices of org A (and ``--org-b-devices`` of org B) connect at
  ``--concurrency`` per device process and catch up; the daemon's RSS growth per device;
* **fan-out**: a change that 1,000 devices see, then one every device sees, each committed
  after the previous one reached its last device: last-device latency p50/p99 and the
  daemon's CPU per delivered change;
* **one device**: changes each one device sees, at ``--rate``, on an idle fleet and again
  while an org-wide change lands every second; they go to ``--probes`` devices of org A
  (every org-wide change, a team of their own) held by a process of their own, as a phone
  has its own CPU: a fleet device's process has its thousands of neighbours' frames to
  read first, which is the bench's backlog, not the daemon's latency;
* **fairness**: org B's live p99 (a change all its devices see, 5 per second) before and
  while ``--storm-devices`` fresh devices of org A make their first download at once;
* **storm**: the daemon restarts (its shutdown with every device live is timed) and every
  device reconnects at once with its last checkpoint: time until all caught up, and
  Welcomes/s against the echo server's handshakes/s.

Which rows a device sees: the profile filters ``owner_id in user.teams``, and device i's
token holds team 0 (every device), team 1 (the first 1,000) and a team of its own, so one
commit reaches all, 1,000 or one device by its owner alone, and each device has its own plan
(its claims differ), as field workers with an owner filter do.

Limits of the machine, said rather than hidden: a process may hold at most the hard
descriptor limit (``ulimit -Hn``, 20,000 here and not raisable in this container), so the
daemon stops near 19,800 devices; the device processes share the same two cores, and their
CPU is printed beside the daemon's so a figure limited by the device side says so.

    python -m bench.fleet [--devices N] [--workers N] [--storm-devices N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench import record
from bench.common import (
    CRM_MODEL,
    DaemonProcess,
    PgServer,
    cpu_seconds,
    embedded_server,
    load_org,
    postgres_cpu_seconds,
    print_table,
    rss_bytes,
    with_database,
)
from bench.fleet_devices import MARK, worker_main
from bench.latency import summarize
from syncd.devcerts import ensure_dev_pki
from syncd.store.sql import database_name
from syncd.tls_tickets import new_ticket_key_text

ORG_A: Final = "fleet-a"
ORG_B: Final = "fleet-b"
ALL_TEAM: Final = "0"
K_TEAM: Final = "1"
K_DEVICES: Final = 1000
OWN_BASE: Final = 100_000  # device i's own team; loaded rows use owners 0..999
FRESH_BASE: Final = 2  # fresh devices' teams start here (rows of owners 2..)
GRACE_S: Final = 60.0
CONNECT_DEADLINE_S: Final = 600.0
# Descriptors the daemon needs beside its devices: pools, logs, listeners, PostgreSQL.
DAEMON_FD_RESERVE: Final = 200
KIB: Final = 1024

GOALS: Final = {
    "devices": "50,000 live",
    "rss": "<= 40 KiB",
    "fan1k": "p99 < 100 ms",
    "fanall": "p99 < 500 ms (10k)",
    "one": "p99 < 50 ms",
    "storm": "< 15 s (10k)",
    "handshakes": ">= 0.6x",
    "fair": "org B p99 unharmed",
}


def _model() -> dict[str, Any]:
    model: dict[str, Any] = {**CRM_MODEL}
    account = {"filter": {"column": "owner_id", "op": "in", "param": "user.teams"}}
    model["profiles"] = {"field": {"offline": True, "entities": {"account": account}}}
    model["default_profile"] = "field"
    return model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- device processes -------------------------------------------------------------------------


class Worker:
    """One device process and the requests in flight to it."""

    def __init__(self, index: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.index = index
        self.source = f"127.0.1.{index + 1}"
        self._next = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                rid, result, error = self.pipe.recv()
            except (EOFError, OSError):
                rid, result, error = -2, None, "device process gone"
            self._loop.call_soon_threadsafe(self._settle, rid, result, error)
            if rid < 0:
                return

    def _settle(self, rid: int, result: Any, error: str | None) -> None:
        if rid < 0:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"worker {self.index}: {error}"))
            return
        future = self._pending.pop(rid)
        if error is not None:
            future.set_exception(RuntimeError(f"worker {self.index}: {error}"))
        else:
            future.set_result(result)

    async def call(self, name: str, **kwargs: Any) -> Any:
        rid = self._next
        self._next += 1
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = future
        self.pipe.send((rid, name, kwargs))
        return await future

    async def close(self) -> None:
        self.pipe.send((0, "exit", {}))
        await asyncio.to_thread(self.process.join, 30)
        if self.process.is_alive():
            self.process.kill()


@dataclass
class Fleet:
    workers: list[Worker]
    owner_of: dict[int, int] = field(default_factory=dict)  # device index -> worker
    probe: Worker | None = None
    """The last of ``workers`` when ``--probes``: a few devices in a process of their own."""

    @property
    def loaded(self) -> list[Worker]:
        """The processes holding the fleet proper (thousands of devices each)."""
        return [w for w in self.workers if w is not self.probe]

    def worker_of(self, index: int) -> Worker:
        return self.workers[self.owner_of[index]]

    async def each(self, name: str, **kwargs: Any) -> list[Any]:
        return list(await asyncio.gather(*(w.call(name, **kwargs) for w in self.workers)))

    async def add(
        self, specs: Sequence[tuple[int, str, str, tuple[str, ...]]], on: Worker | None = None
    ) -> None:
        """Give the devices of `specs` to the loaded processes in turn, or all to `on`."""
        split: list[list[tuple[int, str, str, tuple[str, ...]]]] = [[] for _ in self.workers]
        loaded = self.loaded
        for spec in specs:
            worker = on if on is not None else loaded[spec[0] % len(loaded)]
            w = self.workers.index(worker)
            self.owner_of[spec[0]] = w
            split[w].append(spec)
        await asyncio.gather(
            *(w.call("add", specs=s) for w, s in zip(self.workers, split, strict=True))
        )

    async def connect(
        self, indices: Sequence[int] | None, concurrency: int, resume: bool
    ) -> dict[str, Any]:
        """Connect devices (all when None) and merge the workers' outcomes."""
        if indices is None:
            calls = [
                w.call(
                    "connect",
                    indices=None,
                    concurrency=concurrency,
                    resume=resume,
                    deadline_s=CONNECT_DEADLINE_S,
                )
                for w in self.workers
            ]
        else:
            split: list[list[int]] = [[] for _ in self.workers]
            for i in indices:
                split[self.owner_of[i]].append(i)
            calls = [
                w.call(
                    "connect",
                    indices=s,
                    concurrency=concurrency,
                    resume=resume,
                    deadline_s=CONNECT_DEADLINE_S,
                )
                for w, s in zip(self.workers, split, strict=True)
            ]
        merged: dict[str, Any] = {
            "ok": 0,
            "failed": 0,
            "busy": 0,
            "retries": 0,
            "tls_resumed": 0,
            "tls_done": [],
            "welcomed": [],
            "caught_up": [],
            "errors": {},
        }
        for outcome in await asyncio.gather(*calls):
            for key in ("ok", "failed", "busy", "retries", "tls_resumed"):
                merged[key] += outcome[key]
            for key in ("tls_done", "welcomed", "caught_up"):
                merged[key] += outcome[key]
            for name, n in outcome["errors"].items():
                merged["errors"][name] = merged["errors"].get(name, 0) + n
        return merged

    async def cpu(self) -> float:
        return float(sum(u["cpu"] for u in await self.each("usage")))


# --- committing and timing changes -----------------------------------------------------------


class Committer:
    """Single-row INSERTs into one org's staging table, each named ``fleet N``.

    A small pool: one-device changes are committed while an org-wide one is in flight."""

    INSERT: Final = (
        "INSERT INTO account (id, owner_id, name, city, amount, modified_at, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )

    def __init__(self, org: str, pool: asyncpg.Pool) -> None:
        self.org = org
        self.pool = pool

    @classmethod
    async def open(cls, pg: PgServer, org: str) -> Committer:
        dsn = with_database(pg.dsn, database_name(org))
        return cls(org, await asyncpg.create_pool(dsn, min_size=4, max_size=4))

    async def commit(self, n: int, owner: int) -> float:
        """Commit change ``n`` for ``owner``; the moment the COMMIT returned."""
        now = datetime.now(UTC)
        await self.pool.execute(
            self.INSERT, uuid.uuid4(), owner, f"{MARK}{n}", "Oslo", Decimal(1), now, 0
        )
        return time.monotonic()

    async def close(self) -> None:
        await self.pool.close()


@dataclass
class Delivery:
    """One change: how many devices should and did get it, and the last one's latency."""

    expected: int
    count: int
    last_ms: float


class Changes:
    """Numbered changes: commit one and time its arrival at every device that should see it."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._n = 0

    async def deliver(
        self, committer: Committer, owner: int, workers: Sequence[Worker] | None = None
    ) -> Delivery:
        n = self._n
        self._n += 1
        targets = self.fleet.workers if workers is None else workers
        waits = [
            asyncio.ensure_future(
                w.call("expect", n=n, org=committer.org, owner=str(owner), grace_s=GRACE_S)
            )
            for w in targets
        ]
        committed = await committer.commit(n, owner)
        reports = await asyncio.gather(*waits)
        expected = sum(r["expected"] for r in reports)
        count = sum(r["count"] for r in reports)
        last = max((r["last"] for r in reports if r["count"]), default=committed)
        return Delivery(expected, count, (last - committed) * 1000)


# --- phases -----------------------------------------------------------------------------------


@dataclass
class Usage:
    """CPU seconds of the daemon, the device processes and PostgreSQL over a phase."""

    daemon: float
    devices: float
    postgres: float
    seconds: float
    full_gcs: int = 0
    """The daemon's full garbage collections in the phase (``syncd_gc_pause_seconds``)."""
    full_gc_seconds: float = 0.0

    def share(self) -> dict[str, float | None]:
        s = max(self.seconds, 1e-9)
        return {"daemon": self.daemon / s, "bench": self.devices / s, "postgres": self.postgres / s}

    def cells(self) -> list[str]:
        share = self.share()
        return [
            f"{share['daemon'] or 0:.0%}",
            f"{share['bench'] or 0:.0%}",
            f"{share['postgres'] or 0:.0%}",
            f"{self.full_gcs}, {self.full_gc_seconds:.1f} s",
        ]


def full_gcs(ops_port: int | None) -> tuple[int, float]:
    """The daemon's full collections so far and their seconds, from its /metrics."""
    if ops_port is None:
        return 0, 0.0
    url = f"http://127.0.0.1:{ops_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return 0, 0.0  # the daemon is stopping: the phase's count is what was read before
    count, seconds = 0, 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "syncd_gc_pause_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("generation") != "2":
                continue
            if sample.name.endswith("_count"):
                count = int(sample.value)
            elif sample.name.endswith("_sum"):
                seconds = sample.value
    return count, seconds


def _py_spy() -> str:
    """py-spy from PATH, or beside this interpreter (a virtualenv's bin/)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def _log_problems(path: Path) -> str:
    """The daemon's "sessions drained" line in ``path`` (how its shutdown went) and what it
    logged at warning and above, counted by level and message, with the first exception
    seen: a shutdown that logs per session is slow."""
    counts: Counter[tuple[str, str]] = Counter()
    first_exception = ""
    drained: dict[str, Any] = {}
    for line in path.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            counts[("unparsed", line[:80].decode(errors="replace"))] += 1
            continue
        level = str(entry.get("level", ""))
        if entry.get("msg") == "sessions drained":
            drained = {k: entry.get(k) for k in ("closed", "cancelled", "unfinished", "seconds")}
        if level in ("warning", "error", "critical"):
            detail = entry.get("error") or entry.get("step")  # a probe's error, a step's name
            cause = (
                f" ({detail}, {entry.get('seconds', '')} s)"
                if entry.get("step")
                else (f" ({detail})" if detail else "")
            )
            counts[(level, (str(entry.get("msg", "")) + cause)[:120])] += 1
            if not first_exception and entry.get("exc"):
                first_exception = str(entry["exc"]).splitlines()[-1][:200]
    summary = f"{path.name}: sessions drained {drained or '(no line)'}; "
    if not counts:
        return summary + "nothing logged at warning or above"
    listed = "; ".join(f"{n:,} x {level} {msg!r}" for (level, msg), n in counts.most_common(5))
    return summary + listed + (f"; first exception: {first_exception}" if first_exception else "")


def spy_on(daemon: DaemonProcess, phase: str) -> subprocess.Popen[bytes] | None:
    """With ``--profile`` naming ``phase``, py-spy sampling the daemon (it writes its
    speedscope file beside the run's results when interrupted or when the daemon exits)."""
    if phase not in Meter.profile or daemon.pid is None:
        return None
    out = record.results_dir() / f"fleet-{phase}-{os.getpid()}.speedscope.json"
    spy = subprocess.Popen(
        [_py_spy(), "record", "--pid", str(daemon.pid), "--rate", "200",
         "--format", "speedscope", "--output", str(out),
         # Native stacks are read with the daemon paused; Python ones need not pause it.
         *(["--native"] if Meter.native else ["--nonblocking"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"profiling the daemon during {phase}: {out}", flush=True)
    return spy


class Meter:
    """Measures a phase's CPU use: ``async with Meter(...) as m: ...; m.usage``.

    With ``--profile PHASE ...`` the daemon is sampled by py-spy during those phases (a
    speedscope file each, beside the run's results), the way the fleet's costs were found."""

    profile: frozenset[str] = frozenset()
    native = False
    """py-spy ``--native`` (C frames too)."""
    ops_port: int | None = None
    """The daemon's metrics endpoint, for its garbage collections."""

    def __init__(self, daemon: DaemonProcess, fleet: Fleet, pg: PgServer, phase: str) -> None:
        self.daemon, self.fleet, self.pg, self.phase = daemon, fleet, pg, phase
        self.usage = Usage(0, 0, 0, 0)
        self._spy: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Meter:
        self._spy = spy_on(self.daemon, self.phase)
        self._d0 = cpu_seconds(self.daemon.pid) or 0.0
        self._f0 = await self.fleet.cpu()
        self._p0 = postgres_cpu_seconds(self.pg)
        self._g0 = await asyncio.to_thread(full_gcs, self.ops_port)
        self._t0 = time.monotonic()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.usage = Usage(
            (cpu_seconds(self.daemon.pid) or 0.0) - self._d0,
            await self.fleet.cpu() - self._f0,
            postgres_cpu_seconds(self.pg) - self._p0,
            time.monotonic() - self._t0,
        )
        count, seconds = await asyncio.to_thread(full_gcs, self.ops_port)
        self.usage.full_gcs = count - self._g0[0]
        self.usage.full_gc_seconds = seconds - self._g0[1]
        if self._spy is not None:
            self._spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(self._spy.wait, 60)


@dataclass
class Report:
    """The printed table: one row per figure, with its ceiling, goal and CPU."""

    rows: list[list[object]] = field(default_factory=list)

    def add(
        self, figure: str, value: str, ceiling: str, goal: str, usage: Usage | None = None
    ) -> None:
        self.rows.append([figure, value, ceiling, goal, *(usage.cells() if usage else ["-"] * 4)])

    def print(self) -> None:
        print_table(
            [
                "figure",
                "measured",
                "same-run ceiling",
                "goal",
                "daemon CPU",
                "devices CPU",
                "pg CPU",
                "daemon full GCs",
            ],
            self.rows,
        )


def _rate(times: Sequence[float], t0: float) -> float:
    return len(times) / max(max(times) - t0, 1e-9) if times else 0.0


async def ceiling_phase(fleet: Fleet, pki_dir: Path, count: int) -> tuple[float, float]:
    """The echo server's handshakes/s for ``count`` connections at once, and its KiB each."""
    pki = ensure_dev_pki(pki_dir)
    server = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
        [sys.executable, "-m", "bench.tls_echo", str(pki.server_cert), str(pki.server_key)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.to_thread(server.stdout.readline)
        port = int(line.split()[1])
        rss0 = rss_bytes(server.pid) or 0
        loaded = fleet.loaded
        per = [count // len(loaded)] * len(loaded)
        per[0] += count - sum(per)
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(w.call("echo", port=port, count=n) for w, n in zip(loaded, per, strict=True))
        )
        done = [t for r in results for t in r["done"]]
        failed = sum(r["failed"] for r in results)
        rate = _rate(done, t0)
        rss1 = rss_bytes(server.pid) or 0
        kib = (rss1 - rss0) / max(len(done), 1) / KIB
        await fleet.each("echo_close")
    finally:
        server.terminate()
        server.wait(10)
    seconds = max(done) - t0 if done else 0.0
    print(
        f"ceiling: {len(done):,} bare TLS connections ({failed} failed) in {seconds:.1f} s, "
        f"{rate:,.0f}/s, {kib:.1f} KiB each",
        flush=True,
    )
    record.current().figure(
        "bare TLS handshakes/s, all at once",
        "handshakes/s",
        [rate],
        params={"connections": len(done)},
        phase="ceiling",
    )
    record.current().figure(
        "bare TLS RSS per connection", "KiB", [kib], higher_is_better=False, phase="ceiling"
    )
    return rate, kib


Spec = tuple[int, str, str, tuple[str, ...]]


def _specs(args: argparse.Namespace) -> tuple[list[Spec], list[Spec], list[Spec]]:
    a: list[Spec] = []
    for i in range(args.devices):
        teams = (
            (ALL_TEAM, K_TEAM, str(OWN_BASE + i))
            if i < K_DEVICES
            else (ALL_TEAM, str(OWN_BASE + i))
        )
        a.append((i, ORG_A, f"a{i}", teams))
    b_start = args.devices
    b: list[Spec] = [(b_start + j, ORG_B, f"b{j}", (ALL_TEAM,)) for j in range(args.org_b_devices)]
    fresh_start = b_start + args.org_b_devices
    fresh_teams = tuple(str(FRESH_BASE + t) for t in range(args.storm_teams))
    fresh: list[Spec] = [
        (fresh_start + k, ORG_A, f"f{k}", fresh_teams) for k in range(args.storm_devices)
    ]
    return a, b, fresh


def _probe_specs(args: argparse.Namespace) -> list[Spec]:
    """Devices of org A like the others (every org-wide change, a team of their own), for
    the one-device changes: in a process of their own, as a phone has its own CPU, so
    their latency is the daemon's and the network's, not a device process's backlog."""
    start = args.devices + args.org_b_devices + args.storm_devices
    return [
        (start + k, ORG_A, f"p{k}", (ALL_TEAM, str(OWN_BASE + start + k)))
        for k in range(args.probes)
    ]


async def run(pg: PgServer, args: argparse.Namespace) -> None:
    report = Report()
    for org in (ORG_A, ORG_B):
        await load_org(pg, org, args.rows, model=_model())
    port, ops_port = _free_port(), _free_port()
    server: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if not args.no_ticket_key:
        # Shared by the daemon before and after its restart, as by instances: the storm's
        # devices resume their TLS sessions (README, Operations, "TLS session tickets").
        ticket_key = pg.base / "ticket.key"
        fd = os.open(ticket_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_ticket_key_text())
        server["tls_ticket_key"] = str(ticket_key)
    overrides: dict[str, dict[str, Any]] = {
        "server": server,
        "ops": {"listen": f"127.0.0.1:{ops_port}", "gc_freeze_waves": not args.no_gc_waves},
    }
    Meter.ops_port = ops_port
    daemon = DaemonProcess(pg, overrides=overrides)
    workers = [Worker(i) for i in range(args.workers + (1 if args.probes else 0))]
    fleet = Fleet(workers, probe=workers[-1] if args.probes else None)
    a_specs, b_specs, fresh_specs = _specs(args)
    probe_specs = _probe_specs(args)
    try:
        endpoint = daemon.start()
        await asyncio.gather(
            *(
                w.call(
                    "setup",
                    host=endpoint.host,
                    port=endpoint.port,
                    source=w.source,
                    ca_cert=str(endpoint.ca_cert),
                    token_key=str(endpoint.token_key),
                )
                for w in workers
            )
        )
        # The ceiling first, while the daemon idles (its CPU is not the echo server's).
        ceiling_rate, ceiling_kib = await ceiling_phase(fleet, daemon.base / "certs", args.devices)
        await fleet.add(a_specs + b_specs)
        if probe_specs:
            await fleet.add(probe_specs, on=fleet.probe)
        await _phases(
            pg,
            args,
            daemon,
            fleet,
            report,
            ceiling_rate,
            ceiling_kib,
            a_specs,
            b_specs,
            fresh_specs,
            port,
            [s[0] for s in probe_specs],
        )
    finally:
        for w in workers:
            try:
                await asyncio.wait_for(w.close(), 60)
            except Exception as exc:  # a stuck device process must not hide the figures
                print(f"device process {w.index}: {exc}", file=sys.stderr)
        daemon.stop()
    print(
        f"\nfleet: {args.devices:,} devices of org A, {args.org_b_devices} of org B, "
        f"{args.workers} device processes, {args.rows:,} rows per org; load "
        f"{os.getloadavg()[0]:.1f}"
    )
    report.print()


async def _phases(
    pg: PgServer,
    args: argparse.Namespace,
    daemon: DaemonProcess,
    fleet: Fleet,
    report: Report,
    ceiling_rate: float,
    ceiling_kib: float,
    a_specs: list[tuple[int, str, str, tuple[str, ...]]],
    b_specs: list[tuple[int, str, str, tuple[str, ...]]],
    fresh_specs: list[tuple[int, str, str, tuple[str, ...]]],
    port: int,
    probes: list[int],
) -> None:
    run = record.current()
    changes = Changes(fleet)
    commit_a = await Committer.open(pg, ORG_A)
    commit_b = await Committer.open(pg, ORG_B)
    try:
        # connect --------------------------------------------------------------------------
        rss0 = rss_bytes(daemon.pid) or 0
        async with Meter(daemon, fleet, pg, "connect") as m:
            t0 = time.monotonic()
            asked = [s[0] for s in a_specs + b_specs] + probes
            out = await fleet.connect(asked, args.concurrency, False)
        connected = out["ok"]
        rss1 = rss_bytes(daemon.pid) or 0
        kib = (rss1 - rss0) / max(connected, 1) / KIB
        seconds = max(out["caught_up"], default=t0) - t0
        print(
            f"connected {connected:,} devices ({out['failed']} failed, {out['busy']} busy "
            f"answers, {out['retries']} retries {out['errors']}) in {seconds:.1f} s; daemon "
            f"RSS {rss1 / 2**20:.0f} MiB, {kib:.1f} KiB per device",
            flush=True,
        )
        report.add(
            "live devices connected and caught up",
            f"{connected:,}",
            f"{len(asked):,} asked",
            GOALS["devices"],
            m.usage,
        )
        report.add(
            "daemon RSS per live device",
            f"{kib:.1f} KiB",
            f"{ceiling_kib:.1f} KiB (bare TLS)",
            GOALS["rss"],
        )
        run.figure(
            "live devices connected",
            "devices",
            [connected],
            phase="connect",
            cpu=m.usage.share(),
            params={"asked": len(asked), "failed": out["failed"]},
        )
        run.figure(
            "daemon RSS per live device",
            "KiB",
            [kib],
            ceiling_samples=[ceiling_kib],
            ceiling_name="bare uvloop TLS connection",
            higher_is_better=False,
            phase="connect",
        )

        # fan-out --------------------------------------------------------------------------
        for label, owner, count, goal in (
            (
                f"1 change reaching {min(K_DEVICES, args.devices):,} devices",
                int(K_TEAM),
                args.fanout_changes,
                GOALS["fan1k"],
            ),
            (
                f"1 change reaching all {args.devices + len(probes):,} devices",
                int(ALL_TEAM),
                args.fanout_all_changes,
                GOALS["fanall"],
            ),
        ):
            if count == 0:
                continue
            deliveries: list[Delivery] = []
            # One change first, not counted: the first after connecting pays one-off work
            # (each session's first live read, plans' first encoding).
            await changes.deliver(commit_a, owner)
            async with Meter(daemon, fleet, pg, "fanout") as m:
                for _ in range(count):
                    deliveries.append(await changes.deliver(commit_a, owner))
            lat = summarize([d.last_ms for d in deliveries])
            got = sum(d.count for d in deliveries)
            want = sum(d.expected for d in deliveries)
            per_delivery_us = m.usage.daemon / max(got, 1) * 1e6
            print(
                f"{label}: last device p50 {lat.p50:.0f} ms, p99 {lat.p99:.0f} ms over "
                f"{count} changes; {got:,}/{want:,} delivered; daemon "
                f"{per_delivery_us:.0f} us CPU per delivery",
                flush=True,
            )
            report.add(
                f"{label}, last one",
                f"p50 {lat.p50:.0f} / p99 {lat.p99:.0f} ms",
                f"{per_delivery_us:.0f} us daemon CPU/delivery",
                goal,
                m.usage,
            )
            run.figure(
                f"{label}, last device",
                "ms",
                [d.last_ms for d in deliveries],
                higher_is_better=False,
                latency=lat,
                phase="fanout",
                cpu=m.usage.share(),
                params={
                    "delivered": got,
                    "expected": want,
                    "daemon_us_per_delivery": per_delivery_us,
                },
            )

        # one device -----------------------------------------------------------------------
        rnd = random.Random(10)
        for background in (False, True) if args.single_changes else ():
            singles: list[Delivery] = []
            stop = asyncio.Event()

            async def org_wide_every_second(stop: asyncio.Event = stop) -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    await changes.deliver(commit_a, int(ALL_TEAM))
                    # Pacing the load at one org-wide change per second, not synchronizing.
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

            async with Meter(
                daemon, fleet, pg, "one-device-busy" if background else "one-device"
            ) as m:
                bg = asyncio.create_task(org_wide_every_second()) if background else None
                start = time.monotonic()
                pending = []
                for k in range(args.single_changes):
                    delay = start + k / args.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing the load
                    i = rnd.choice(probes) if probes else rnd.randrange(len(a_specs))
                    pending.append(
                        asyncio.ensure_future(
                            changes.deliver(commit_a, OWN_BASE + i, [fleet.worker_of(i)])
                        )
                    )
                singles = list(await asyncio.gather(*pending))
                stop.set()
                if bg is not None:
                    await bg
            lat = summarize([d.last_ms for d in singles if d.count])
            lost = sum(1 for d in singles if d.count < d.expected)
            label = "a change for one device" + (
                ", an org-wide change every second" if background else ", fleet idle"
            )
            print(
                f"{label}: p50 {lat.p50:.0f} ms, p99 {lat.p99:.0f} ms over {len(singles)} "
                f"({lost} lost)",
                flush=True,
            )
            report.add(
                label, f"p50 {lat.p50:.0f} / p99 {lat.p99:.0f} ms", "-", GOALS["one"], m.usage
            )
            run.figure(
                label,
                "ms",
                [d.last_ms for d in singles if d.count],
                higher_is_better=False,
                latency=lat,
                phase="one-device",
                cpu=m.usage.share(),
                params={"lost": lost},
            )

        # fairness -------------------------------------------------------------------------
        if fresh_specs and b_specs:
            await fleet.add(fresh_specs)
            b_workers = sorted({fleet.owner_of[s[0]] for s in b_specs})
            b_targets = [fleet.workers[w] for w in b_workers]

            async def org_b_changes(until: asyncio.Event | None, count: int) -> list[Delivery]:
                out: list[Delivery] = []
                start = time.monotonic()
                for k in range(count):
                    if until is not None and until.is_set():
                        break
                    delay = start + k / 5.0 - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing the load at 5 changes/s
                    out.append(await changes.deliver(commit_b, int(ALL_TEAM), b_targets))
                return out

            quiet = await org_b_changes(None, 25)
            storm_done = asyncio.Event()

            async def storm() -> dict[str, Any]:
                try:
                    return await fleet.connect([s[0] for s in fresh_specs], 0, False)
                finally:
                    storm_done.set()

            async with Meter(daemon, fleet, pg, "fairness") as m:
                t0 = time.monotonic()
                storm_task = asyncio.create_task(storm())
                during = await org_b_changes(storm_done, 100_000)
                out = await storm_task
            q, d = summarize([x.last_ms for x in quiet]), summarize([x.last_ms for x in during])
            seconds = max(out["caught_up"], default=t0) - t0
            print(
                f"org B p99 {q.p99:.0f} ms quiet, {d.p99:.0f} ms while {out['ok']:,} fresh "
                f"devices of org A downloaded ({out['busy']} busy answers, {seconds:.1f} s, "
                f"{out['failed']} failed)",
                flush=True,
            )
            report.add(
                f"org B p99 during org A's storm of {len(fresh_specs):,} first downloads",
                f"{d.p99:.0f} ms",
                f"{q.p99:.0f} ms quiet",
                GOALS["fair"],
                m.usage,
            )
            run.figure(
                "org B change p99 during org A's first-download storm",
                "ms",
                [x.last_ms for x in during],
                ceiling_samples=[x.last_ms for x in quiet],
                ceiling_name="org B p99 without the storm",
                higher_is_better=False,
                latency=d,
                phase="fairness",
                cpu=m.usage.share(),
                params={
                    "storm_devices": len(fresh_specs),
                    "busy": out["busy"],
                    "storm_seconds": seconds,
                },
            )
            await asyncio.gather(
                *(
                    w.call(
                        "forget",
                        indices=[s[0] for s in fresh_specs if fleet.owner_of[s[0]] == w.index],
                    )
                    for w in fleet.workers
                )
            )

        # storm ----------------------------------------------------------------------------
        if args.skip_storm:
            return
        live = sum(await fleet.each("live"))
        spy = spy_on(daemon, "shutdown")
        t_stop = time.monotonic()
        daemon.stop()
        shutdown_s = time.monotonic() - t_stop
        if spy is not None:
            spy.wait(60)  # it ends with the daemon
        killed = " (killed: it had not exited)" if daemon.killed else ""
        print(f"shutdown with {live:,} live devices: {shutdown_s:.1f} s{killed}", flush=True)
        print(_log_problems(daemon.log_path), flush=True)
        report.add(
            "shutdown with every device live",
            f"{shutdown_s:.1f} s{', killed' if daemon.killed else ''}",
            "-",
            "well inside the 10 s grace",
        )
        await asyncio.wait_for(_all_down(fleet), GRACE_S)
        daemon.start()
        async with Meter(daemon, fleet, pg, "storm") as m:
            t0 = time.monotonic()
            out = await fleet.connect(None, 0, True)
        seconds = max(out["caught_up"], default=t0) - t0
        welcomes = _rate(out["welcomed"], t0)
        ratio = welcomes / ceiling_rate if ceiling_rate else 0.0
        handshakes = len(out["tls_done"])
        resumed = out["tls_resumed"] / handshakes if handshakes else 0.0
        print(
            f"storm: {out['ok']:,} devices back and caught up in {seconds:.1f} s "
            f"({out['busy']} busy answers, {out['retries']} retries, {out['failed']} failed "
            f"{out['errors']}); {welcomes:,.0f} Welcomes/s = {ratio:.2f}x the bare TLS "
            f"loop's {ceiling_rate:,.0f}/s (full handshakes); TLS sessions resumed: "
            f"{out['tls_resumed']:,} of {handshakes:,} handshakes ({resumed:.0%})",
            flush=True,
        )
        print(f"during the storm, {_log_problems(daemon.log_path)}", flush=True)
        report.add(
            f"{out['ok']:,} devices reconnecting at once, all caught up",
            f"{seconds:.1f} s",
            "-",
            GOALS["storm"],
            m.usage,
        )
        report.add(
            "handshakes/s during that storm",
            f"{welcomes:,.0f}/s = {ratio:.2f}x",
            f"{ceiling_rate:,.0f}/s bare TLS",
            GOALS["handshakes"],
        )
        run.figure(
            "reconnect storm, all caught up",
            "s",
            [seconds],
            higher_is_better=False,
            phase="storm",
            cpu=m.usage.share(),
            params={
                "devices": out["ok"],
                "busy": out["busy"],
                "failed": out["failed"],
                "tls_resumed": resumed,
            },
        )
        run.figure(
            "Welcomes/s during the reconnect storm",
            "handshakes/s",
            [welcomes],
            ceiling_samples=[ceiling_rate],
            ceiling_name="bare uvloop TLS accept loop",
            phase="storm",
        )
    finally:
        await commit_a.close()
        await commit_b.close()


async def _all_down(fleet: Fleet) -> None:
    """Until no device process holds a live session (the daemon closed them all)."""
    while sum(await fleet.each("live")):  # noqa: ASYNC110 (state of other processes)
        await asyncio.sleep(0.1)  # polling other processes' state, bounded by the caller


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=10_000, help="live devices of org A")
    parser.add_argument("--org-b-devices", type=int, default=100)
    parser.add_argument(
        "--storm-devices",
        type=int,
        default=5_000,
        help="fresh org A devices whose first downloads storm (fairness)",
    )
    parser.add_argument(
        "--storm-teams",
        type=int,
        default=10,
        help="teams each fresh device holds (its download: rows/1000 each)",
    )
    parser.add_argument("--workers", type=int, default=3, help="device processes")
    parser.add_argument(
        "--probes",
        type=int,
        default=20,
        help="org A devices in a process of their own that the one-device changes go to"
        " (0: to random fleet devices, whose process has the fleet's backlog)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="connects in flight per device process while the fleet forms",
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows per org")
    parser.add_argument("--fanout-changes", type=int, default=20)
    parser.add_argument("--fanout-all-changes", type=int, default=10)
    parser.add_argument("--single-changes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="one-device changes per second")
    parser.add_argument(
        "--no-gc-waves",
        action="store_true",
        help="the daemon freezes the collector after start-up only (ops.gc_freeze_waves false)",
    )
    parser.add_argument(
        "--skip-storm", action="store_true", help="no restart and reconnect storm at the end"
    )
    parser.add_argument(
        "--profile",
        choices=[
            "connect",
            "fanout",
            "one-device",
            "one-device-busy",
            "fairness",
            "shutdown",
            "storm",
        ],
        nargs="+",
        default=[],
        help="sample the daemon with py-spy during these phases",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --profile: C frames too (uvloop, OpenSSL; a syscall's kernel time is its own)",
    )
    parser.add_argument(
        "--no-ticket-key",
        action="store_true",
        help="no server.tls_ticket_key: the storm after the restart does full TLS handshakes",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small fleet (300 devices) to check the bench itself"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.org_b_devices, args.storm_devices = 300, 20, 100
        args.fanout_changes, args.fanout_all_changes, args.single_changes = 5, 5, 20
        args.rows, args.workers = 2_000, 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = hard - DAEMON_FD_RESERVE
    if args.devices + args.org_b_devices > budget:
        parser.error(
            f"--devices + --org-b-devices must stay under {budget:,}: the daemon may "
            f"hold {hard:,} descriptors (ulimit -Hn)"
        )
    room = budget - args.devices - args.org_b_devices - args.probes
    if args.storm_devices > room:
        print(
            f"--storm-devices {args.storm_devices:,} -> {room:,}: the daemon's descriptor "
            f"limit {hard:,} holds no more beside the live fleet",
            flush=True,
        )
        args.storm_devices = room
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    Meter.profile = frozenset(args.profile)
    Meter.native = args.native
    if args.profile and not Path(_py_spy()).exists():
        sys.exit("bench.fleet: --profile needs py-spy (pip install py-spy), not found")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with record.bench_run("fleet", argv), embedded_server("syncd-fleet-") as pg:
        uvloop.run(run(pg, args))


if __name__ == "__main__":
    main()
