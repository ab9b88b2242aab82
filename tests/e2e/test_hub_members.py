"""A device that hangs up leaves the live hub when its session ends.

Before, a session left the hub only when the hub dropped it or its plan changed: one that
simply ended stayed a member, so every later window of its partitions was offered to a
session nobody read, its frames piled up in its queue, and the hub finally "dropped" it as
a slow device (a warning and a ``syncd_live_drops_total`` for a phone that had only gone
away). With reconnects, each connection left one such member behind.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncd.client import LocalDB
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.e2e.field_org import OWNERS_MODEL, account, keys


async def test_a_session_that_ends_is_no_longer_a_hub_member(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org, OWNERS_MODEL)
    await ingest(store, OWNERS_MODEL, Changeset(upserts={"account": [account(1, 7, 1)]}))
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    async with asyncio.timeout(60):
        for n in range(3):  # three connections of the same device, one after the other
            db = LocalDB.open(tmp_path / "device.sqlite")
            client = running.client(db, running.token(org, user="7"), org)
            stop = asyncio.Event()
            before = running.daemon.session_tasks
            live = asyncio.create_task(client.run_live(stop))
            await client.caught_up.wait()
            (session,) = running.daemon.session_tasks - before
            # A live change proves the session joined the hub.
            row = account(10 + n, 7, 1)
            await ingest(store, OWNERS_MODEL, Changeset(upserts={"account": [row]}))
            while str(row["id"]) not in keys(db, "account"):
                client.checkpoint_applied.clear()  # before looking: no missed wake-up
                if str(row["id"]) in keys(db, "account"):
                    break
                await client.checkpoint_applied.wait()
            assert runtime.hub.partition_count > 0
            stop.set()
            await live
            await session
            db.close()
            assert runtime.hub.partition_count == 0
    drops = running.daemon.metrics.live_drops.labels(org=org)._value.get()
    assert drops == 0
