"""Shared work in live fan-out (issue 5): does the cost of a change grow with devices?

Strategy. One embedded PostgreSQL, the daemon in this event loop (so its staging store's
``fetch`` can be counted: every database statement the org's sessions and hub run goes
through it), and protocol-level devices (``bench.sync.WireDevice``: decode only, ack every
checkpoint; 1,000 SQLite clients would not fit on two cores). Each scenario connects its
devices, waits until all are live, then a writer commits single-row INSERTs at a steady rate
and every (device, change) arrival is timed against the moment the COMMIT returned.

Scenarios, all 1,000 devices of one profile:

* ``org-wide``: no filter, every device sees every row: one live partition;
* ``50 teams``: ``owner_id in user.teams`` with one team (of 50) per user: 50 partitions;
* ``owner per user``: ``{"owner": "owner_id"}``, each device sees its own user's rows: one
  partition per user, read only when a change touches that owner;
* ``field workers``: the demo's default profile, accounts by owner and the contacts of
  those accounts (a ``related`` filter); each change is a contact inserted under one user's
  account. Each user's contacts are a partition of their own that reads ``account``: a
  keyed partition (``syncd.store.touched_keys``), asked once per window which owners the
  written rows lead to, so a change should cost what an owner change costs;
* ``50 teams, pairs``: the same filter with two random teams of the 50 per user: still one
  partition per team (the plan splits a claim list into one piece per value), 50 of them,
  though the users hold hundreds of distinct team pairs.

Per change it prints the statements the daemon ran and the CHANGES frames it encoded
(``syncd_frames_encoded``), the live partitions (``LiveHub.partition_count``) and
commit-to-device p50/p99. The goal of the issue is that the cost per change follows the
partitions a change touches, not the devices nor their distinct filters.

    python -m bench.fanout [--devices N] [--teams N] [--changes N] [--rate R] [--rows N]
                           [--only SCENARIO ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg
import uvloop

from bench import progress, record
from bench.common import (
    CRM_MODEL,
    DEV_AUDIENCE,
    DEV_ISSUER,
    Endpoint,
    PgServer,
    _daemon_settings,
    embedded_server,
    load_org,
    print_table,
    with_database,
)
from bench.latency import CELL_HEADERS, summarize
from bench.sync import NAME_INDEX, READ_CHUNK, Countdown, WireDevice, WireError
from protocol import Changes, Hello, Welcome
from syncd.auth import mint_token
from syncd.config import load_config
from syncd.devcerts import ensure_dev_pki
from syncd.server.app import Daemon
from syncd.store.sql import database_name

LIVE_PREFIX: Final = "fan "
WARM_UP: Final = -1
# How long the last change may take to reach every device before it counts as lost.
GRACE_S: Final = 30.0
# Connecting is paced (TLS handshakes cost ~1 ms of CPU each, ARCHITECTURE.md, ceilings)
# so a thousand devices do not arrive as one storm; the figure measured is live delivery,
# not connecting.
CONNECT_CONCURRENCY: Final = 50


def _model(scenario: Scenario) -> dict[str, Any]:
    model: dict[str, Any] = {**CRM_MODEL}
    account: dict[str, Any] = {}
    if scenario.owner:
        account = {"filter": {"owner": "owner_id"}}
    elif scenario.teams_per_user:  # "teams" are owner ids 0..teams-1; the claim carries them
        account = {"filter": {"column": "owner_id", "op": "in", "param": "user.teams"}}
    entities: dict[str, Any] = {"account": account}
    if scenario.contacts:
        model["entities"] = {**model["entities"], "contact": CONTACT}
        entities["contact"] = {"filter": {"related": {"entity": "account", "via": "account_id"}}}
    model["profiles"] = {"sales": {"offline": True, "entities": entities}}
    return model


# The field worker's second entity: contacts of the accounts the user owns. ``name`` is at
# the account's NAME_INDEX, so one marker check serves both entities.
CONTACT: Final[dict[str, Any]] = {
    "key": "id",
    "columns": {"id": "uuid", "account_id": "uuid", "name": "text"},
}


def owned_account(owner: int) -> uuid.UUID:
    """The account each user of the field-worker scenario owns (besides the loaded ones)."""
    return uuid.UUID(int=10**9 + owner)


@dataclass(frozen=True)
class Scenario:
    name: str
    org: str
    teams_per_user: int  # 0: org-wide, no filter
    owner: bool = False  # an owner filter instead: user i sees the rows with owner_id = i
    contacts: bool = False  # with owner: contacts of owned accounts too; changes are contacts

    def teams_of(self, user: int, teams: int, rnd: random.Random) -> list[str]:
        if self.teams_per_user == 0:
            return []
        if self.teams_per_user == 1:
            return [str(user % teams)]
        return [str(t) for t in sorted(rnd.sample(range(teams), self.teams_per_user))]


@dataclass
class TeamDevice(WireDevice):
    teams: list[str] = field(default_factory=list)

    async def connect(self) -> Welcome:
        self._reader, self._writer = await asyncio.open_connection(
            self.endpoint.host, self.endpoint.port, ssl=self.endpoint.ssl_context(),
            server_hostname="localhost", limit=READ_CHUNK,
        )  # fmt: skip
        token = mint_token(
            self.endpoint.token_key.read_bytes(), issuer=DEV_ISSUER, audience=DEV_AUDIENCE,
            org=self.org, user=self.user, teams=self.teams,
        )  # fmt: skip
        self._send(Hello((1,), token, self.org, uuid.uuid4().hex, "bench/fanout"))
        welcome = await self.next()
        if not isinstance(welcome, Welcome):
            raise WireError(f"expected Welcome, got {welcome!r}")
        return welcome


@dataclass
class Result:
    scenario: str
    devices: int
    partitions: int
    changes: int
    queries: int
    encodings: int
    latencies_ms: list[float]
    expected_pairs: int
    per_round: list[tuple[int, int, list[float]]] = field(default_factory=list)
    """(statements, encodings, latencies) of each round of `changes` commits."""

    def row(self) -> list[object]:
        lat = summarize(self.latencies_ms)
        return [
            self.scenario, self.devices, self.partitions, self.changes,
            f"{self.queries / self.changes:.1f}", f"{self.encodings / self.changes:.1f}",
            *lat.cells(), f"{lat.count}/{self.expected_pairs}",
        ]  # fmt: skip

    def record(self) -> None:
        """Statements and encodings per change, and the latency, as figures of the run."""
        run = record.current()
        params = {"scenario": self.scenario, "devices": self.devices,
                  "partitions": self.partitions, "changes": self.changes,
                  "delivered": len(self.latencies_ms), "expected": self.expected_pairs}  # fmt: skip
        per_change = self.changes / len(self.per_round)
        for name, samples in (("statements", [q for q, _, _ in self.per_round]),
                              ("encodings", [e for _, e, _ in self.per_round])):  # fmt: skip
            run.figure(f"{name} per change, {self.scenario}", f"{name}/change",
                       [n / per_change for n in samples], higher_is_better=False,
                       params=params, phase="fanout")  # fmt: skip
        lat = summarize(self.latencies_ms)
        if lat.count:
            p99s = [summarize(r[2]).p99 for r in self.per_round if r[2]]
            run.figure(f"commit-to-device p99, {self.scenario}", "ms", p99s,
                       higher_is_better=False, latency=lat, params=params,
                       phase="fanout")  # fmt: skip


class Counted:
    """Counts the statements one org's staging store runs (the daemon's own fetch path)."""

    def __init__(self, daemon: Daemon, org: str) -> None:
        registry = daemon.registry
        assert registry is not None
        runtime = registry.get(org)
        assert runtime is not None
        self.runtime = runtime
        self.count = 0
        store = runtime.staging
        inner: Callable[..., Awaitable[Any]] = store.fetch

        async def fetch(sql: str, *args: object) -> Any:
            self.count += 1
            return await inner(sql, *args)

        store.fetch = fetch  # type: ignore[method-assign]

    @property
    def partitions(self) -> int:
        return self.runtime.hub.partition_count


async def run_scenario(
    endpoint: Endpoint, daemon: Daemon, pg: PgServer, scenario: Scenario, args: argparse.Namespace
) -> Result:
    rnd = random.Random(5)
    devices = [
        TeamDevice(endpoint, scenario.org, user=str(i), teams=scenario.teams_of(i, args.teams, rnd))
        for i in range(args.devices)
    ]
    counted = Counted(daemon, scenario.org)
    encoded = daemon.metrics.frames_encoded.labels(org=scenario.org)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    committed: dict[int, float] = {}
    arrivals: list[tuple[int, float]] = []
    warm = Countdown(len(devices))
    # Which changes each device must see: team t reaches devices holding t.
    change_team = {n: rnd.randrange(args.teams) for n in range(args.changes * args.rounds)}
    holders: dict[int, int] = {}
    for d in devices:
        for t in [d.user] if scenario.owner else d.teams:
            holders[int(t)] = holders.get(int(t), 0) + 1

    def reach(team: int) -> int:
        org_wide = scenario.teams_per_user == 0 and not scenario.owner
        return len(devices) if org_wide else holders.get(team, 0)

    round_expected = [
        sum(reach(change_team[n]) for n in range(r * args.changes, (r + 1) * args.changes))
        for r in range(args.rounds)
    ]
    expected = sum(round_expected)
    measured = Countdown(expected)

    async def catch_up(device: TeamDevice) -> None:
        async with gate:
            await device.connect()
            await device.download()

    async def listen(device: TeamDevice) -> None:
        warmed = False
        while True:
            message = await device.next()
            if isinstance(message, Changes):
                now = time.perf_counter()
                for row in message.upserts:
                    name = row[NAME_INDEX]
                    if isinstance(name, str) and name.startswith(LIVE_PREFIX):
                        n = int(name[len(LIVE_PREFIX) :])
                        if n == WARM_UP:
                            if not warmed:
                                warmed = True
                                warm.tick()
                        else:
                            arrivals.append((n, now))
                            measured.tick()

    conn = await asyncpg.connect(with_database(pg.dsn, database_name(scenario.org)))
    insert = await conn.prepare(
        "INSERT INTO account (id, owner_id, name, city, amount, modified_at, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )

    if scenario.contacts:
        contact = await conn.prepare(
            "INSERT INTO contact (id, account_id, name) VALUES ($1, $2, $3)"
        )
        await conn.executemany(
            "INSERT INTO account (id, owner_id, name, city, amount, modified_at, status)"
            " VALUES ($1, $2, 'owned', 'Oslo', 1, now(), 0)",
            [(owned_account(i), i) for i in range(args.devices)],
        )

    async def commit(n: int, team: int) -> float:
        if scenario.contacts:
            await contact.fetch(uuid.uuid4(), owned_account(team), f"{LIVE_PREFIX}{n}")
            return time.perf_counter()
        now = datetime.now(UTC)
        await insert.fetch(uuid.uuid4(), team, f"{LIVE_PREFIX}{n}", "Oslo", Decimal(1), now, 0)
        return time.perf_counter()

    listeners: list[asyncio.Task[None]] = []
    try:
        connected = [0]

        async def counted_catch_up(device: TeamDevice) -> None:
            await catch_up(device)
            connected[0] += 1

        what = f"{scenario.name}: devices caught up"
        async with progress.polled(what, lambda: connected[0], len(devices), "devices"):
            await asyncio.gather(*(counted_catch_up(d) for d in devices))
        listeners = [asyncio.create_task(listen(d)) for d in devices]
        # One change every device receives (a row of every team would do; the warm-up row
        # is sent per team) proves all sessions joined the hub.
        warm_owners = args.devices if scenario.owner else args.teams
        for owner in range(warm_owners if scenario.teams_per_user or scenario.owner else 1):
            await commit(WARM_UP, owner)
        async with asyncio.timeout(GRACE_S):
            await warm.done.wait()
        what = f"{scenario.name}: deliveries"
        counts: list[tuple[int, int]] = []
        async with progress.polled(what, lambda: len(arrivals), expected, "deliveries"):
            for r in range(args.rounds):
                measured.reset(round_expected[r])
                queries0, encoded0 = counted.count, encoded._value.get()
                start = time.perf_counter()
                for i in range(args.changes):
                    n = r * args.changes + i
                    delay = start + i / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing the load, not synchronizing
                    committed[n] = await commit(n, change_team[n])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GRACE_S):
                        await measured.done.wait()
                counts.append((counted.count - queries0, int(encoded._value.get() - encoded0)))
        partitions = counted.partitions
    finally:
        await conn.close()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in devices))
    per_round: list[tuple[int, int, list[float]]] = [(q, e, []) for q, e in counts]
    for n, at in arrivals:
        if n in committed:
            per_round[n // args.changes][2].append((at - committed[n]) * 1000)
    pairs = [ms for r in per_round for ms in r[2]]
    return Result(
        scenario.name, len(devices), partitions, args.changes * args.rounds,
        sum(q for q, _ in counts), sum(e for _, e in counts), pairs, expected, per_round,
    )  # fmt: skip


async def run(pg: PgServer, args: argparse.Namespace, scenarios: Sequence[Scenario]) -> None:
    for s in scenarios:
        await load_org(pg, s.org, args.rows, model=_model(s))
    base = pg.base / "daemon"
    base.mkdir(exist_ok=True)
    settings = _daemon_settings(base, pg.control_dsn, 1000)
    settings.pop("logging")
    settings["sync"]["send_queue_frames"] = 4096
    pki = ensure_dev_pki(base / "certs")
    daemon = Daemon(load_config(None, env={}, overrides=settings))
    await daemon.startup()
    try:
        assert daemon.device_port is not None
        endpoint = Endpoint("127.0.0.1", daemon.device_port, pki.ca_cert, pki.token_key)
        results = [await run_scenario(endpoint, daemon, pg, s, args) for s in scenarios]
    finally:
        await daemon.shutdown()
    print(
        f"\nlive fan-out: {args.devices} devices per scenario, {args.rounds} x {args.changes}"
        f" single-row commits at {args.rate:g}/s, {args.teams} teams, {args.rows} rows per org"
    )
    print_table(
        ["scenario", "devices", "partitions", "changes", "queries/change", "encodings/change",
         *CELL_HEADERS, "delivered"],
        [r.row() for r in results],
    )  # fmt: skip
    for r in results:
        r.record()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="commits per second")
    parser.add_argument("--rows", type=int, default=2000, help="rows loaded per org")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of --changes commits per scenario"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="SCENARIO", help="run only these scenarios (by name)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    scenarios = [
        Scenario("org-wide", "fan-org", 0),
        Scenario(f"{args.teams} teams", "fan-team", 1),
        Scenario(f"{args.teams} teams, pairs", "fan-pairs", 2),
        Scenario("owner per user", "fan-owner", 0, owner=True),
        Scenario("field workers", "fan-field", 0, owner=True, contacts=True),
    ]
    if args.only:
        scenarios = [s for s in scenarios if s.name in args.only]
    with record.bench_run("fanout", argv), embedded_server("syncd-fan-") as pg:
        uvloop.run(run(pg, args, scenarios))


if __name__ == "__main__":
    main()
