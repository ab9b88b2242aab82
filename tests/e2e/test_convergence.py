"""Randomized convergence: random staging histories, devices syncing and editing at random.

A seeded history interleaves staging writes (owner, team and amount changes, inserts,
deletes, membership rows added and removed, contacts moving between accounts, notes, several
writes in one transaction), model pushes (a filter's range edited, a column no longer
writable, an entity dropped from some profiles while devices hold queued edits of it), users
moved to another profile, and device actions: offline devices reconnecting with their stored
checkpoint, live devices dropped and coming back, devices' own edits (several ops of one key
queued offline and uploaded in one batch, with a refused op in the middle), and the events
that found issue 9's bugs (`tests/e2e/convergence_events.py`): the org removed and added
again under the same name, the daemon restarted with uploads in flight, a device presenting
another device's sync token.

At the end every device syncs twice (its last uploads, then everyone's) and

- its SQLite must hold exactly the rows its filters select from staging: no more, no fewer,
  the same values. The expected rows come from the filter's own SQL run against staging, so
  an edited key ends as whatever staging holds;
- every edit it accepted must be applied (the server's stored verdicts), recorded in
  `db.errors()`, or still queued: nothing lost silently.

Each rare event kind happens at least once in every run, at a seeded step. The CI run is
one short seed; ``-m slow`` (``make test-long``) runs many longer ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import pprint
import random
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.model import ClientModel
from syncd.store import StagingStore
from syncd.store.bound_filter import bind_filter
from syncd.store.feed import wire_select_list
from syncd.store.sql import ident
from tests.e2e.conftest import org_name
from tests.e2e.convergence_events import (
    TEAMS,
    USERS,
    Daemons,
    Device,
    Ledger,
    ModelShape,
    admin_call,
    borrow_token,
    chain,
    live_edit,
    offline_edits,
    push_model,
    readd_org,
    send_upload,
    single_edit,
    staging_of,
)
from tests.e2e.helpers import device_rows

KINDS = (
    "owner",
    "team",
    "amount",
    "insert",
    "delete",
    "member+",
    "member-",
    "move",
    "child",
    "tx",
    "note",
)
#: Events every run holds at least once, each at a seeded step.
RARE = ("readd", "restart", "borrow", "drop_note", "chain")
BOUND_S = 30


def acc(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


class History:
    """Random writes against one org's staging database, as the ingest role would make."""

    def __init__(self, rng: random.Random, store: StagingStore) -> None:
        self.rng, self.store = rng, store
        self.accounts = 12
        self.contacts = 12
        self.members = 0
        self.notes = 0

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
        for _ in range(3):
            await self.write_note()

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

    async def write_note(self) -> None:
        if self.notes and self.rng.random() < 0.5:
            n = self.rng.randint(1, self.notes)
        else:
            self.notes += 1
            n = self.notes
        await self.store.fetch(
            "INSERT INTO note (id, body) VALUES ($1, $2)"
            " ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            uuid.UUID(int=10_000 + n),
            f"server {self.rng.random():.3f}",
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
        elif kind == "note":
            await self.write_note()
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
    """The oracle: the rows the profile's filter selects, by its own SQL against staging."""
    params = {"user.id": device.user, "user.teams": device.teams, "user.roles": []}
    f = bind_filter(parsed, parsed.profile(profile), entity, params, device.user)
    e = parsed.entity(entity)
    args: list[object] = []
    where = "true" if f is None else f.sql(e, lambda c: f"t.{ident(c.name)}", args)
    sql = f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t WHERE {where}"
    rows = await store.fetch(sql, *args)
    return {tuple(int(v) if isinstance(v, bool) else v for v in r) for r in rows}


class Run:
    """One seeded history against one org, with its devices, daemon and books."""

    def __init__(self, daemons: Daemons, devices_dir: Path, seed: int, steps: int) -> None:
        self.daemons, self.seed, self.steps = daemons, seed, steps
        self.rng = random.Random(seed)
        self.org = org_name()
        self.shape = ModelShape()
        self.profiles = {"7": "sales", "8": "custom", "9": "claims"}
        self.devices = []
        for i, user in enumerate(("7", "7", "8", "9", "8")):
            path = devices_dir / f"d{i}.sqlite"
            teams = [1, 3] if user == "9" else []
            self.devices.append(Device(f"d{i}", user, teams, path, LocalDB.open(path)))
        self.n = 0  # numbers the devices' edit values
        self.removed_keys: set[tuple[str, str]] = set()  # (entity, key) of removed incarnations
        self.log: list[str] = []  # rare events, for the failure message

    # -- devices ------------------------------------------------------------------------

    def client(self, d: Device) -> SyncClient:
        running = self.daemons.running
        token = running.token(self.org, user=d.user, teams=[str(t) for t in d.teams])
        return running.client(d.db, token, self.org, device_id=d.name)

    async def sync(self, d: Device) -> None:
        await self.go_offline(d)
        async with asyncio.timeout(BOUND_S):
            client = self.client(d)
            await client.sync_once()

    def go_live(self, d: Device) -> None:
        d.client = self.client(d)
        d.live = asyncio.create_task(d.client.run_live(d.stop))

    async def go_offline(self, d: Device) -> None:
        if d.live is not None:
            d.stop.set()
            async with asyncio.timeout(BOUND_S):
                await d.live
            d.live, d.client, d.stop = None, None, asyncio.Event()

    async def all_offline(self) -> list[Device]:
        """Take every device offline; returns those that were live."""
        were = [d for d in self.devices if d.live is not None]
        for d in were:
            await self.go_offline(d)
        return were

    def edit_number(self) -> int:
        self.n += 10
        return self.n

    # -- the org --------------------------------------------------------------------------

    async def create(self) -> None:
        await admin_call(self.daemons.running, "org.add", {"name": self.org})
        await push_model(self.daemons.running, self.org, self.shape, self.profiles)
        self.history = History(self.rng, staging_of(self.daemons.running, self.org))
        await self.history.seed()
        self.ledger = Ledger(self.history.store)

    def refresh_store(self) -> None:
        """A restarted daemon or a re-added org has a store object of its own."""
        store = staging_of(self.daemons.running, self.org)
        self.history.store = self.ledger.store = store

    # -- events ---------------------------------------------------------------------------

    async def readd(self) -> None:
        """org remove + org add under the same name, same model: devices keep their
        databases (same (server, org, user)) and must end with the new incarnation's rows."""
        await self.all_offline()
        await self.ledger.retire()
        for entity in ("account", "contact", "note", "team_member"):
            old = await self.history.store.fetch(f"SELECT id FROM {entity}")
            self.removed_keys |= {(entity, str(r[0])) for r in old}
        store = await readd_org(self.daemons.running, self.org, self.shape, self.profiles)
        accounts, contacts = self.history.accounts, self.history.contacts
        self.history = History(self.rng, store)
        await self.history.seed()  # the same keys again, with other values
        self.history.accounts, self.history.contacts = max(accounts, 12), max(contacts, 12)
        self.ledger.store = store

    async def restart(self) -> None:
        """Stop the daemon while uploads are in flight: some offline devices have sent a
        batch (answered or not, never settled), live devices were just told to upload."""
        cut: list[SyncClient] = []
        offline = [d for d in self.devices if d.live is None]
        for d in self.rng.sample(offline, min(2, len(offline))):
            if not d.db.pending_count():
                offline_edits(self.rng, d, self.shape, self.edit_number())
            client = self.client(d)
            async with asyncio.timeout(BOUND_S):
                if await send_upload(client, d.db, wait_for_result=self.rng.random() < 0.5):
                    cut.append(client)
        for d in self.devices:
            if d.live is not None:
                live_edit(self.rng, d, self.shape, self.edit_number())
        await self.daemons.restart()
        for client in cut:
            await client.close()
        for d in await self.all_offline():  # their clients knew the old port
            self.go_live(d)
        self.refresh_store()

    async def borrow(self) -> None:
        src, dst = self.rng.sample(self.devices, 2)
        await self.go_offline(src)
        await self.go_offline(dst)
        if self.rng.random() < 0.5:
            await self.sync(src)  # a newer token than dst's: it would skip what dst missed
        how = await borrow_token(self.rng, src, dst, self.ledger)
        self.log.append(f"{dst.name} got {src.name}'s token ({how})")
        if self.rng.random() < 0.5:
            await self.sync(dst)

    async def push(self, drop_note: bool = False) -> None:
        """A model push; first some offline devices queue note edits. With `drop_note` the
        push takes note from their profiles: those edits must become UNKNOWN_ENTITY
        rejections in `db.errors()`, never vanish."""
        editors = [d for d in self.rng.sample(self.devices, 2) if d.live is None]
        for d in editors:
            single_edit(self.rng, d, self.shape, self.edit_number(), "note")
        shape = self.shape.pushed(self.rng)
        if drop_note:
            victims = {self.profiles[d.user] for d in editors} or {"sales"}
            shape = replace(shape, without_note=frozenset(victims))
        self.shape = shape
        await push_model(self.daemons.running, self.org, shape, self.profiles)

    async def event(self, kind: str, d: Device) -> None:
        if kind in RARE:
            self.log.append(f"{kind} ({d.name})")
        if kind == "write":
            await self.history.step()
        elif kind == "sync":
            await self.sync(d)
        elif kind == "live":
            if d.live is None:
                self.go_live(d)
            else:
                await self.go_offline(d)
        elif kind == "edit":
            if d.live is not None and self.rng.random() < 0.5:
                live_edit(self.rng, d, self.shape, self.edit_number())
            else:
                await self.go_offline(d)
                offline_edits(self.rng, d, self.shape, self.edit_number())
        elif kind == "chain":
            await self.go_offline(d)
            chain(self.rng, d, self.shape, self.edit_number())
            await self.sync(d)  # the chain goes up in one batch
        elif kind == "model":
            await self.push()
        elif kind == "drop_note":
            await self.push(drop_note=True)
        elif kind == "profile":
            user = self.rng.choice(("7", "8"))
            self.profiles[user] = self.rng.choice(("sales", "custom", "owners"))
            await admin_call(
                self.daemons.running,
                "profile.assign",
                {"org": self.org, "user": user, "profile": self.profiles[user]},
            )
        elif kind == "borrow":
            await self.borrow()
        elif kind == "restart":
            await self.restart()
        elif kind == "readd":
            await self.readd()
        else:
            raise AssertionError(kind)

    def draw(self) -> str:
        x = self.rng.random()
        for kind, upto in (
            ("write", 0.60),
            ("sync", 0.70),
            ("live", 0.80),
            ("edit", 0.89),
            ("chain", 0.92),
            ("model", 0.945),
            ("profile", 0.965),
            ("drop_note", 0.975),
            ("borrow", 0.99),
            ("restart", 0.995),
        ):
            if x < upto:
                return kind
        return "readd"

    # -- the run ------------------------------------------------------------------------

    async def play(self) -> None:
        await self.create()
        scheduled = dict(zip(self.rng.sample(range(self.steps), len(RARE)), RARE, strict=True))
        for step in range(self.steps):
            kind = scheduled.get(step) or self.draw()
            await self.event(kind, self.rng.choice(self.devices))
        await self.all_offline()
        for _ in range(2):  # each device's last uploads, then everyone's
            for d in self.devices:
                await self.sync(d)
        await self.check()

    async def check(self) -> None:
        store = self.history.store
        parsed = ClientModel.parse(self.shape.json())
        for d in self.devices:
            assert d.db.pending_count() == 0, (self.seed, d.name, d.db.pending_edits())
            profile = self.profiles[d.user]
            for entity, _ in parsed.profile(profile).entities:
                want = await expected(store, parsed, profile, d, entity)
                have = device_rows(d.db, entity)
                assert have == want, pprint.pformat(
                    {
                        "seed": self.seed,
                        "device": d.name,
                        "profile": profile,
                        "entity": entity,
                    }
                    | self.diagnose(d, entity, have - want, want - have),
                    width=100,
                )
        for d in self.devices:
            await self.ledger.check(d)
        # The history did what it is for: devices edited, the server applied and refused.
        outcomes = {e.code for d in self.devices for e in d.db.errors()}
        assert sum(d.made for d in self.devices) > 0, self.log
        assert any([await self.ledger.applied(d) for d in self.devices]), self.log
        assert outcomes, self.log

    def diagnose(
        self, d: Device, entity: str, extra: set[Any], missing: set[Any]
    ) -> dict[str, Any]:
        """Name what diverged: the failure message of a seed is its bug report."""
        missing_keys = {r[0] for r in missing}
        stale = [r for r in extra if r[0] not in missing_keys]
        return {
            "extra": sorted(map(str, extra)),
            "missing": sorted(map(str, missing)),
            "extra keys a removed incarnation had (stale rows or versions)": [
                r[0] for r in extra if (entity, str(r[0])) in self.removed_keys
            ],
            "kept keys inserted and deleted in one batch": [
                r[0] for r in stale if str(r[0]) in d.chain_keys
            ],
            "events": self.log,
            "restarts": self.daemons.restarts,
        }

    def close(self) -> None:
        for d in self.devices:
            d.db.close()


async def run_history(
    base: Path, control_dsn: str, devices_dir: Path, seed: int, steps: int
) -> None:
    daemons = Daemons(base, control_dsn)
    async with daemons.session():
        run = Run(daemons, devices_dir, seed, steps)
        try:
            await run.play()
        finally:
            for d in run.devices:
                d.stop.set()
                if d.live is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(BOUND_S):
                            await d.live
            run.close()


async def test_devices_converge_on_their_filtered_rows(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    await run_history(workdir, control_dsn, tmp_path, seed=1, steps=150)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(10, 22))
async def test_long_histories_converge(
    workdir: Path, control_dsn: str, tmp_path: Path, seed: int
) -> None:
    await run_history(workdir, control_dsn, tmp_path, seed=seed, steps=600)
