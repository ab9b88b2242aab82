"""Rows moving in and out of a device's filters, over TLS with the real client.

Each move kind is checked on a device that reconnects later with its stored checkpoint and
on a device that stays live: the device ends with exactly the rows its filters select, and
what arrived in frames (rows and tombstones) is exactly the movers, so no key outside the
filter ever reaches it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from protocol import Changes
from syncd.client import LocalDB
from tests.e2e.conftest import RunningDaemon, org_name
from tests.e2e.field_org import acc, keys, seed, sync


async def test_owner_change_on_reconnect(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    store = await seed(running, org)
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, "7", "owners")
    await registry.reload(org)
    db = LocalDB.open(tmp_path / "owner.sqlite")
    await sync(running, org, db, "7")
    assert keys(db, "account") == {acc(1), acc(3)}
    await store.fetch("UPDATE account SET owner_id = 8 WHERE id = $1::uuid", acc(1))
    await store.fetch("UPDATE account SET owner_id = 7 WHERE id = $1::uuid", acc(2))
    await store.fetch("UPDATE account SET owner_id = 9 WHERE id = $1::uuid", acc(4))
    stats = await sync(running, org, db, "7")
    assert keys(db, "account") == {acc(2), acc(3)}
    assert (stats.rows_applied, stats.deletes_applied) == (1, 1)  # nothing about account 4


async def test_staging_membership_and_parent_moves_on_reconnect(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await seed(running, org)
    db = LocalDB.open(tmp_path / "u7.sqlite")
    await sync(running, org, db, "7")
    assert (keys(db, "account"), keys(db, "contact"), keys(db, "task")) == ({acc(1)}, {10}, {100})
    # User 7 joins team 2 in staging: account 2, its contact and task arrive whole.
    await store.fetch("INSERT INTO team_member (id, user_id, team_id) VALUES (3, '7', 2)")
    stats = await sync(running, org, db, "7")
    assert (keys(db, "account"), keys(db, "contact"), keys(db, "task")) == (
        {acc(1), acc(2)},
        {10, 11},
        {100, 101},
    )
    assert (stats.rows_applied, stats.deletes_applied) == (4, 0)  # 3 rows + team_member 3
    # Account 1 leaves the user's teams: its contact and task leave with it.
    await store.fetch("UPDATE account SET team_id = 3 WHERE id = $1::uuid", acc(1))
    stats = await sync(running, org, db, "7")
    assert (keys(db, "account"), keys(db, "contact"), keys(db, "task")) == ({acc(2)}, {11}, {101})
    assert (stats.rows_applied, stats.deletes_applied) == (0, 3)


async def test_moves_reach_a_live_device(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    store = await seed(running, org)
    db = LocalDB.open(tmp_path / "live.sqlite")
    frames: list[Changes] = []
    token = running.token(org, user="7")
    client = running.client(db, token, org, on_live_change=frames.append)
    stop = asyncio.Event()
    live = asyncio.create_task(client.run_live(stop))
    try:
        async with asyncio.timeout(30):
            await client.caught_up.wait()
        assert keys(db, "task") == {100}

        async def settle(entity: str, want: set[Any]) -> None:
            # Frames are applied at the checkpoint that follows them.
            async with asyncio.timeout(30):
                while True:
                    client.checkpoint_applied.clear()  # before looking: no missed wake-up
                    if keys(db, entity) == want:
                        return
                    await client.checkpoint_applied.wait()

        await store.fetch("DELETE FROM team_member WHERE id = 1")  # user 7 leaves team 1
        await settle("task", set())
        assert keys(db, "account") == set()
        assert keys(db, "contact") == set()
        await store.fetch("INSERT INTO team_member (id, user_id, team_id) VALUES (3, '7', 2)")
        await settle("task", {101})
        assert keys(db, "account") == {acc(2)}
        received = {
            (f.entity, "d" if key in f.deletes else "u", key)
            for f in frames
            for key in [*f.deletes, *(r[0] for r in f.upserts)]
            if f.entity in ("account", "contact", "task")
        }
        # Only team 1's chain left and team 2's arrived: user 8's team never showed up before.
        assert received == {
            ("account", "d", acc(1)),
            ("contact", "d", 10),
            ("task", "d", 100),
            ("account", "u", acc(2)),
            ("contact", "u", 11),
            ("task", "u", 101),
        }
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await live
