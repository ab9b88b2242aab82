"""Randomized convergence: random staging histories, devices syncing at random points.

A seeded history interleaves staging writes (owner, team and amount changes, inserts,
deletes, membership rows added and removed, contacts moving between accounts, several writes
in one transaction), model changes (a filter's range edited, a user moved to another
profile) and device actions: offline devices reconnecting with their stored checkpoint, live
devices being dropped and coming back. At the end every device reconnects once more and its
SQLite must hold exactly the rows its filters select from staging: no more, no fewer, the
same values. The expected rows come from the filter's own SQL run against staging.

The CI run is one short seed; ``-m slow`` runs several long ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.filters.compiled import bind_filter
from syncd.model import ClientModel
from syncd.store import StagingStore
from syncd.store.feed import wire_select_list
from syncd.store.sql import ident
from tests.e2e.conftest import RunningDaemon, org_name
from tests.e2e.helpers import device_rows
from tests.filters.model import field_model

USERS = ("7", "8", "9")
TEAMS = (1, 2, 3)
KINDS = ("owner", "team", "amount", "insert", "delete", "member+", "member-", "move", "child", "tx")


def model(low: int = 10, high: int = 100) -> dict[str, Any]:
    m = field_model()
    m["profiles"]["sales"]["entities"]["team_member"] = {"filter": {"owner": "user_id"}}
    m["profiles"]["custom"] = {
        "offline": True,
        "entities": {
            "account": {
                "filter": {
                    "and": [
                        {"column": "amount", "op": "between", "value": [low, high]},
                        {"not": {"column": "owner_id", "op": "in", "value": [9]}},
                    ]
                }
            },
            "contact": {"filter": {"related": {"entity": "account", "via": "account_id"}}},
        },
    }
    m["profiles"]["claims"] = {
        "offline": True,
        "entities": {
            "account": {"filter": {"column": "team_id", "op": "in", "param": "user.teams"}}
        },
    }
    return m


def acc(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


@dataclass
class Device:
    name: str
    user: str
    teams: list[int]
    db: LocalDB
    live: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class History:
    """Random writes against one org's staging database, as the ingest role would make."""

    def __init__(self, rng: random.Random, store: StagingStore) -> None:
        self.rng, self.store = rng, store
        self.accounts = 12
        self.contacts = 12
        self.members = 0

    async def seed(self) -> None:
        for n in range(1, self.accounts + 1):
            await self.insert_account(n)
        for n in range(1, self.contacts + 1):
            await self.store.fetch(
                "INSERT INTO contact (id, account_id, email) VALUES ($1, $2, $3)",
                n,
                acc(self.rng.randint(1, self.accounts)),
                f"c{n}",
            )
            await self.store.fetch("INSERT INTO task (id, contact_id) VALUES ($1, $2)", 100 + n, n)
        for user in USERS:
            await self.add_member(user)

    async def insert_account(self, n: int) -> None:
        r = self.rng
        await self.store.fetch(
            "INSERT INTO account (id, name, owner_id, team_id, amount) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (id) DO NOTHING",
            acc(n),
            f"a{n}",
            r.choice((6, 7, 8, 9)),
            r.choice((*TEAMS, None)),
            r.randint(0, 150),
        )

    async def add_member(self, user: str | None = None) -> None:
        self.members += 1
        await self.store.fetch(
            "INSERT INTO team_member (id, user_id, team_id) VALUES ($1, $2, $3)",
            self.members,
            user or self.rng.choice(USERS),
            self.rng.choice(TEAMS),
        )

    async def step(self) -> None:
        r = self.rng
        a = acc(r.randint(1, self.accounts))
        kind = r.choice(KINDS)
        sql: list[tuple[str, tuple[Any, ...]]] = []
        if kind == "owner":
            sql.append(("UPDATE account SET owner_id = $2 WHERE id = $1", (a, r.choice((6, 7, 9)))))
        elif kind == "team":
            sql.append(("UPDATE account SET team_id = $2 WHERE id = $1", (a, r.choice(TEAMS))))
        elif kind == "amount":
            sql.append(("UPDATE account SET amount = $2 WHERE id = $1", (a, r.randint(0, 150))))
        elif kind == "insert":
            self.accounts += 1
            await self.insert_account(self.accounts)
        elif kind == "delete":
            sql.append(("DELETE FROM account WHERE id = $1", (a,)))
        elif kind == "member+":
            await self.add_member()
        elif kind == "member-":
            sql.append(("DELETE FROM team_member WHERE id = $1", (r.randint(1, self.members),)))
        elif kind == "move":
            c = r.randint(1, self.contacts)
            sql.append(("UPDATE contact SET account_id = $2 WHERE id = $1", (c, a)))
        elif kind == "child":
            self.contacts += 1
            c = self.contacts
            sql.append(("INSERT INTO contact (id, account_id, email) VALUES ($1, $2, 'n')", (c, a)))
            sql.append(("INSERT INTO task (id, contact_id) VALUES ($1, $2)", (100 + c, c)))
        else:  # several writes in one transaction: a team change and a membership change
            sql.append(("UPDATE account SET team_id = $2 WHERE id = $1", (a, r.choice(TEAMS))))
            sql.append(("UPDATE team_member SET team_id = $2 WHERE id = $1", (1, r.choice(TEAMS))))
        if sql:
            pool = await self.store.pool()
            async with pool.acquire() as conn, conn.transaction():
                for text, args in sql:
                    await conn.execute(text, *args)


async def expected(
    store: StagingStore, parsed: ClientModel, profile: str, device: Device, entity: str
) -> set[tuple[Any, ...]]:
    params = {"user.id": device.user, "user.teams": device.teams, "user.roles": []}
    f = bind_filter(parsed, parsed.profile(profile), entity, params, device.user)
    e = parsed.entity(entity)
    args: list[object] = []
    where = "true" if f is None else f.sql(e, lambda c: f"t.{ident(c.name)}", args)
    sql = f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t WHERE {where}"
    rows = await store.fetch(sql, *args)
    return {tuple(int(v) if isinstance(v, bool) else v for v in r) for r in rows}


async def run_history(running: RunningDaemon, base: Path, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    org = org_name()
    store = await running.add_org(org, model())
    registry = running.daemon.registry
    assert registry is not None
    profiles = {"7": "sales", "8": "custom", "9": "claims"}
    for user, profile in profiles.items():
        await registry.control.assign_profile(org, user, profile)
    await registry.reload(org)
    history = History(rng, store)
    await history.seed()
    devices = [
        Device(f"d{i}", user, [1, 3] if user == "9" else [], LocalDB.open(base / f"d{i}.sqlite"))
        for i, user in enumerate(("7", "7", "8", "9", "8"))
    ]
    parsed = ClientModel.parse(model())

    def client(d: Device) -> SyncClient:
        token = running.token(org, user=d.user, teams=[str(t) for t in d.teams])
        return running.client(d.db, token, org, device_id=d.name)

    async def go_offline(d: Device) -> None:
        if d.live is not None:
            d.stop.set()
            async with asyncio.timeout(30):
                await d.live
            d.live, d.stop = None, asyncio.Event()

    try:
        for _ in range(steps):
            action = rng.random()
            d = rng.choice(devices)
            if action < 0.7:
                await history.step()
            elif action < 0.82:
                await go_offline(d)
                async with asyncio.timeout(30):
                    await client(d).sync_once()
            elif action < 0.94:
                if d.live is None:
                    d.live = asyncio.create_task(client(d).run_live(d.stop))
                else:
                    await go_offline(d)
            elif action < 0.97:
                low, high = rng.randint(0, 60), rng.randint(60, 150)
                parsed = ClientModel.parse(model(low, high))
                await registry.stores.provision(org, parsed)
                await registry.control.put_model(org, parsed)
                await registry.reload(org)
            else:
                user = rng.choice(("7", "8"))
                profiles[user] = rng.choice(("sales", "custom", "owners"))
                await registry.control.assign_profile(org, user, profiles[user])
                await registry.reload(org)
        for d in devices:
            await go_offline(d)
            async with asyncio.timeout(30):
                await client(d).sync_once()
        for d in devices:
            profile = profiles[d.user]
            for entity, _ in parsed.profile(profile).entities:
                want = await expected(store, parsed, profile, d, entity)
                assert device_rows(d.db, entity) == want, (seed, d.name, profile, entity)
    finally:
        for d in devices:
            d.stop.set()
            if d.live is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(30):
                        await d.live
            d.db.close()


async def test_devices_converge_on_their_filtered_rows(
    running: RunningDaemon, tmp_path: Path
) -> None:
    await run_history(running, tmp_path, seed=1, steps=120)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(10, 16))
async def test_long_histories_converge(running: RunningDaemon, tmp_path: Path, seed: int) -> None:
    await run_history(running, tmp_path, seed=seed, steps=1500)
