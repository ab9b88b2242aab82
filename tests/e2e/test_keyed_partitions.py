"""A write under a related parent is read only for the user it concerns (issue 10, item 3).

Four field workers are live with the same profile: accounts they own, and the contacts of
those accounts. Each user's contacts are a partition of their own (the filter reads
``account``), so before keyed partitions a write to one contact read the contacts of all
four users. Now the hub asks the change log once which owners the window's writes lead to:
the contact written under user A's account reaches A's device and nobody else's, and the
window runs no read bound to another user's id. The daemon's statements are observed by
wrapping the org's staging ``fetch`` (it still runs every statement itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from pathlib import Path
from typing import Any

from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.e2e.field_org import MODEL, account, keys

OWNERS = (6001, 6002, 6003, 6004)
PROFILE: dict[str, Any] = {
    "offline": True,
    "entities": {
        "account": {"filter": {"owner": "owner_id"}},
        "contact": {"filter": {"related": {"entity": "account", "via": "account_id"}}},
    },
}


async def test_a_contact_write_reads_only_its_owners_partition(
    running: RunningDaemon, tmp_path: Path
) -> None:
    model = copy.deepcopy(MODEL)
    model["profiles"]["field"] = PROFILE
    model["default_profile"] = "field"
    org = org_name()
    store = await running.add_org(org, model)
    accounts = [account(n, owner, 1) for n, owner in enumerate(OWNERS, start=1)]
    contacts = [{"id": n, "account_id": a["id"], "email": "c"} for n, a in enumerate(accounts)]
    await ingest(store, model, Changeset(upserts={"account": accounts, "contact": contacts}))
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    statements: list[tuple[str, tuple[object, ...]]] = []
    inner = runtime.staging.fetch

    async def recording(sql: str, *args: object) -> Any:
        statements.append((sql, args))
        return await inner(sql, *args)

    runtime.staging.fetch = recording  # type: ignore[method-assign]
    stop = asyncio.Event()
    clients: dict[int, tuple[SyncClient, LocalDB]] = {}
    tasks = []
    for owner in OWNERS:
        db = LocalDB.open(tmp_path / f"{owner}.sqlite")
        client = running.client(db, running.token(org, user=str(owner)), org)
        clients[owner] = (client, db)
        tasks.append(asyncio.create_task(client.run_live(stop)))
    try:
        async with asyncio.timeout(60):
            for client, _ in clients.values():
                await client.caught_up.wait()
            for n, owner in enumerate(OWNERS):
                assert keys(clients[owner][1], "contact") == {n}
            # The first write proves every session has joined the hub (each of them gets a
            # contact); only the second window counts.
            first = [
                {"id": 10 + n, "account_id": a["id"], "email": "x"} for n, a in enumerate(accounts)
            ]
            await ingest(store, model, Changeset(upserts={"contact": first}))
            for n, owner in enumerate(OWNERS):
                await until_holds(clients[owner], 10 + n)
            statements.clear()
            mine = {"id": 99, "account_id": accounts[1]["id"], "email": "new"}
            await ingest(store, model, Changeset(upserts={"contact": [mine]}))
            await until_holds(clients[OWNERS[1]], 99)
        for owner in (OWNERS[0], OWNERS[2], OWNERS[3]):
            assert 99 not in keys(clients[owner][1], "contact")
        bound = [args for _, args in statements]
        assert any(OWNERS[1] in args for args in bound)  # its partition was read
        others = {OWNERS[0], OWNERS[2], OWNERS[3]}
        assert not [args for args in bound if others & set(a for a in args if isinstance(a, int))]
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)


async def until_holds(device: tuple[SyncClient, LocalDB], contact: int) -> None:
    client, db = device
    while True:
        client.checkpoint_applied.clear()  # before looking: no missed wake-up
        if contact in keys(db, "contact"):
            return
        await client.checkpoint_applied.wait()
