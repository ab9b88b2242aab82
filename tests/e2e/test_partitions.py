"""Live devices share partitions: a team's rows are read and encoded once for every device
that holds the team, whatever else each device holds, and rows moving between teams reach
exactly the right devices.

Two devices over TLS with the real client: A holds teams {1, 2}, B holds {2, 3} (the
``claims`` profile: ``team_id in user.teams``). Each step changes staging and waits until both
devices hold exactly what their teams select; what arrived in frames (rows and tombstones)
is checked against exactly the movers, so no key of another team ever reaches a device.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import Changes
from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.store import Changeset, StagingStore
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.e2e.field_org import MODEL, acc, account, keys

TEAMS = {"a": ["1", "2"], "b": ["2", "3"]}
NAME, TEAM = 1, 3  # wire positions of account columns (model order: id, name, owner_id, team_id)


@dataclass
class Device:
    db: LocalDB
    client: SyncClient
    frames: list[Changes] = field(default_factory=list)

    def received(self) -> set[tuple[str, str]]:
        """(op, key) of every account row and tombstone since the last call."""
        out = {
            ("d" if k in f.deletes else "u", str(k))
            for f in self.frames
            if f.entity == "account"
            for k in [*f.deletes, *(r[0] for r in f.upserts)]
        }
        self.frames.clear()
        return out

    async def holds(self, want: set[str]) -> None:
        # Frames are applied at the checkpoint that follows them.
        async with asyncio.timeout(30):
            while True:
                self.client.checkpoint_applied.clear()  # before looking: no missed wake-up
                if keys(self.db, "account") == want:
                    return
                await self.client.checkpoint_applied.wait()


@contextlib.asynccontextmanager
async def live_devices(
    running: RunningDaemon, org: str, tmp_path: Path
) -> AsyncIterator[dict[str, Device]]:
    devices: dict[str, Device] = {}
    stop = asyncio.Event()
    tasks = []
    for name, teams in TEAMS.items():
        db = LocalDB.open(tmp_path / f"{name}.sqlite")
        token = running.token(org, user=name, teams=teams)
        d = Device(db, running.client(db, token, org))
        d.client = running.client(db, token, org, on_live_change=d.frames.append)
        devices[name] = d
        tasks.append(asyncio.create_task(d.client.run_live(stop)))
    try:
        async with asyncio.timeout(30):
            for d in devices.values():
                await d.client.caught_up.wait()
        yield devices
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)


async def seed(running: RunningDaemon, org: str) -> StagingStore:
    store = await running.add_org(org, MODEL)
    registry = running.daemon.registry
    assert registry is not None
    for user in TEAMS:
        await registry.control.assign_profile(org, user, "claims")
    await registry.reload(org)
    accounts = [account(n, owner=0, team=team) for n, team in ((1, 1), (2, 2), (3, 3), (4, 4))]
    await ingest(store, MODEL, Changeset(upserts={"account": accounts}))
    return store


async def move(store: StagingStore, n: int, team: int) -> None:
    await store.fetch("UPDATE account SET team_id = $1 WHERE id = $2::uuid", team, acc(n))


async def test_moves_between_shared_and_own_teams_reach_exactly_the_right_devices(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await seed(running, org)
    async with live_devices(running, org, tmp_path) as dev:
        a, b = dev["a"], dev["b"]
        await a.holds({acc(1), acc(2)})
        await b.holds({acc(2), acc(3)})
        a.received(), b.received()

        # Out of A's own team into B's own team.
        await move(store, 1, 3)
        await a.holds({acc(2)})
        await b.holds({acc(1), acc(2), acc(3)})
        assert a.received() == {("d", acc(1))}
        assert b.received() == {("u", acc(1))}
        # Both sessions are live now (each got a change after its initial download).
        runtime = running.daemon.registry.get(org)  # type: ignore[union-attr]
        assert runtime is not None
        assert runtime.hub.partition_count == 3  # teams 1, 2, 3: not one per team set

        # From the shared team into A's own: A gets a tombstone of team 2 and the row of
        # team 1 in one checkpoint and keeps the row; B loses it.
        await move(store, 2, 1)
        await shows(a, acc(2), TEAM, 1)
        await b.holds({acc(1), acc(3)})
        assert keys(a.db, "account") == {acc(2)}
        assert a.received() == {("d", acc(2)), ("u", acc(2))}
        assert b.received() == {("d", acc(2))}

        # Into the shared team from a team nobody holds: both get the row, once.
        await move(store, 4, 2)
        await a.holds({acc(2), acc(4)})
        await b.holds({acc(1), acc(3), acc(4)})
        assert a.received() == {("u", acc(4))}
        assert b.received() == {("u", acc(4))}

        # Out of every held team, and a new row of a team nobody holds: B gets one tombstone,
        # nobody gets row 5; a later write in the shared team proves those windows were served.
        await move(store, 3, 9)
        await ingest(store, MODEL, Changeset(upserts={"account": [account(5, 0, 9)]}))
        await store.fetch("UPDATE account SET name = 'y' WHERE id = $1::uuid", acc(4))
        await asyncio.gather(shows(a, acc(4), NAME, "y"), shows(b, acc(4), NAME, "y"))
        assert keys(a.db, "account") == {acc(2), acc(4)}
        assert keys(b.db, "account") == {acc(1), acc(4)}
        assert a.received() == {("u", acc(4))}
        assert b.received() == {("d", acc(3)), ("u", acc(4))}


async def test_a_shared_team_change_is_encoded_once(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    store = await seed(running, org)
    encoded = running.daemon.metrics.frames_encoded.labels(org=org)
    async with live_devices(running, org, tmp_path) as dev:
        a, b = dev["a"], dev["b"]
        await a.holds({acc(1), acc(2)})
        await b.holds({acc(2), acc(3)})
        # A change both receive after their downloads proves both sessions joined the hub.
        await store.fetch("UPDATE account SET name = 'w' WHERE id = $1::uuid", acc(2))
        await asyncio.gather(shows(a, acc(2), NAME, "w"), shows(b, acc(2), NAME, "w"))
        a.received(), b.received()
        before = encoded._value.get()
        await store.fetch("UPDATE account SET name = 'z' WHERE id = $1::uuid", acc(2))
        await asyncio.gather(shows(a, acc(2), NAME, "z"), shows(b, acc(2), NAME, "z"))
        # Two devices with different team sets, one CHANGES frame for the team they share.
        assert encoded._value.get() - before == 1
        assert a.received() == b.received() == {("u", acc(2))}


async def shows(d: Device, key: str, column: int, value: Any) -> None:
    """Wait until the device's row ``key`` holds ``value`` at wire position ``column``."""
    async with asyncio.timeout(30):
        while True:
            d.client.checkpoint_applied.clear()  # before looking: no missed wake-up
            rows = [r for r in d.db.rows("account") if r[0] == key]
            if rows and rows[0][column] == value:
                return
            await d.client.checkpoint_applied.wait()


async def test_a_team_nobody_followed_is_asked_for_once_its_device_is_live(
    running: RunningDaemon, tmp_path: Path
) -> None:
    """The hub keeps its live partitions grouped for a window's questions and rebuilds the
    grouping only when members bring or take away partitions (``TouchGroups``): a device
    whose team no live device held, joining after the hub has read windows, gets that
    team's changes live. Without the rebuild the hub would never ask for team 4."""
    org = org_name()
    store = await seed(running, org)
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, "c", "claims")
    await registry.reload(org)
    async with live_devices(running, org, tmp_path) as dev:
        a = dev["a"]
        await move(store, 3, 1)  # a window read and grouped without team 4
        await a.holds({acc(1), acc(2), acc(3)})
        db = LocalDB.open(tmp_path / "c.sqlite")
        c = Device(db, running.client(db, running.token(org, user="c", teams=["4"]), org))
        stop = asyncio.Event()
        live = asyncio.create_task(c.client.run_live(stop))
        try:
            async with asyncio.timeout(30):
                await c.client.caught_up.wait()
            await c.holds({acc(4)})
            # The first move reaches C by its join's gap read or by a window; either way C
            # is a member once it holds it, so the second can only come by a window.
            await move(store, 1, 4)
            await c.holds({acc(1), acc(4)})
            await move(store, 2, 4)
            await c.holds({acc(1), acc(2), acc(4)})
            await a.holds({acc(3)})
        finally:
            stop.set()
            await asyncio.wait_for(live, 30)
