"""A live partition is read only when a table it reads was written.

A device follows accounts through a filter on the account's own columns (one whole
partition reading only ``account``) and every ``team_member`` row (one org-wide partition).
A write to ``team_member`` reaches the device, and the window that carries it never reads
``account``: the hub skipped that partition because nothing it reads was written. The
daemon's statements are observed by wrapping the org's staging ``fetch`` (it still runs
every statement itself).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from syncd.client import LocalDB
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.e2e.field_org import MODEL, account, keys
from tests.support.statements import record_statements

PROFILE: dict[str, Any] = {
    "offline": True,
    "entities": {
        "account": {"filter": {"column": "amount", "op": "between", "value": ["10", "100"]}},
        "team_member": {},
    },
}


async def test_window_skips_partitions_whose_tables_were_not_written(
    running: RunningDaemon, tmp_path: Path
) -> None:
    model = copy.deepcopy(MODEL)
    model["profiles"]["watch"] = PROFILE
    org = org_name()
    store = await running.add_org(org, model)
    await ingest(store, model, Changeset(upserts={"account": [account(1, 7, 1)]}))
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, "7", "watch")
    await registry.reload(org)
    runtime = registry.get(org)
    assert runtime is not None
    statements = record_statements(runtime.staging)
    db = LocalDB.open(tmp_path / "device.sqlite")
    client = running.client(db, running.token(org, user="7"), org)
    stop = asyncio.Event()
    live = asyncio.create_task(client.run_live(stop))
    try:
        async with asyncio.timeout(30):
            await client.caught_up.wait()
            assert keys(db, "account") == {str(account(1, 7, 1)["id"])}
            # A first write proves the session has joined the hub: it arrives once the join
            # (whose own reads cover every entity) is over. Only the second window counts.
            for n in (1, 2):
                statements.clear()
                member = {"id": n, "user_id": "9", "team_id": 4}
                await ingest(store, model, Changeset(upserts={"team_member": [member]}))
                while True:
                    client.checkpoint_applied.clear()  # before looking: no missed wake-up
                    if n in keys(db, "team_member"):
                        break
                    await client.checkpoint_applied.wait()
        assert any('"team_member"' in s for s in statements)  # its partition was read
        assert not any('"account"' in s for s in statements)  # the account one was not
    finally:
        stop.set()
        await asyncio.wait_for(live, 10)
