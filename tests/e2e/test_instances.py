"""Two daemons over one control database: configuration pushed to one reaches the other,
and devices sync from either (ARCHITECTURE.md, "Several instances")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncd.client import LocalDB
from syncd.store import Changeset
from tests.e2e.conftest import CRM, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, put_model, staging_rows
from tests.support.crm import accounts, with_task_entity


async def test_config_made_on_one_instance_serves_devices_on_another(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    org = org_name()
    certs = workdir / "shared-certs"
    async with (
        run_daemon(workdir / "a", control_dsn, certs=certs) as a,
        run_daemon(workdir / "b", control_dsn, certs=certs) as b,
    ):
        store = await a.add_org(org)
        await ingest(store, CRM, Changeset(upserts={"account": accounts(100)}))
        b_registry = b.daemon.registry
        assert b_registry is not None
        async with asyncio.timeout(20):
            await b_registry.wait_until(
                lambda r: (rt := r.get(org)) is not None and rt.model is not None
            )
        db = LocalDB.open(tmp_path / "device.sqlite")
        client = b.client(db, b.token(org), org)
        stop = asyncio.Event()
        live = asyncio.create_task(client.run_live(stop))
        try:
            async with asyncio.timeout(30):
                await client.caught_up.wait()
                assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
                # A model change made through instance A reaches the device live on B.
                model = with_task_entity()
                await put_model(a, org, model)
                await ingest(store, model, Changeset(upserts={"task": [{"id": 3, "title": "x"}]}))
                while "task" not in db.entities() or db.count("task") != 1:
                    client.checkpoint_applied.clear()
                    await client.checkpoint_applied.wait()
        finally:
            stop.set()
            await asyncio.wait_for(live, 10)
