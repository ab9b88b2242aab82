"""A device syncs over real TLS from a real daemon into SQLite: initial, incremental, live."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from syncd.client import LocalDB
from syncd.store import Changeset
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, staging_rows
from tests.support.crm import accounts, notes


async def test_initial_sync_equals_staging(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    store = await running.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(2500), "note": notes(40)}))
    db = LocalDB.open(tmp_path / "device.sqlite")
    async with asyncio.timeout(30):
        stats = await running.client(db, running.token(org), org).sync_once()
    assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
    assert device_rows(db, "note") == await staging_rows(store, CRM, "note")
    assert stats.rows_applied == 2540
    assert db.checkpoint() is not None


async def test_incremental_sync_carries_only_changes(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(500), "note": notes(10)}))
    db = LocalDB.open(tmp_path / "device.sqlite")
    async with asyncio.timeout(30):
        await running.client(db, running.token(org), org).sync_once()
        changed = accounts(5, owner=9)  # same keys as the first five: updates
        await ingest(
            store,
            CRM,
            Changeset(upserts={"account": changed}, deletes={"note": [1, 2]}),
        )
        stats = await running.client(db, running.token(org), org).sync_once()
    assert stats.rows_applied == 5
    assert stats.deletes_applied == 2
    assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
    assert device_rows(db, "note") == await staging_rows(store, CRM, "note")


async def test_live_device_receives_committed_change(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(10)}))
    db = LocalDB.open(tmp_path / "device.sqlite")
    client = running.client(db, running.token(org), org)
    stop = asyncio.Event()
    live = asyncio.create_task(client.run_live(stop))
    try:
        async with asyncio.timeout(30):
            await client.caught_up.wait()
            client.checkpoint_applied.clear()
            await ingest(store, CRM, Changeset(upserts={"account": accounts(1, owner=42)}))
            while db.get("account", str(uuid.UUID(int=1)))[2] != 42:  # type: ignore[index]
                client.checkpoint_applied.clear()
                await client.checkpoint_applied.wait()
        assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
    finally:
        stop.set()
        await asyncio.wait_for(live, 10)


async def test_restart_keeps_orgs_models_and_device_checkpoints(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    org = org_name()
    db = LocalDB.open(tmp_path / "device.sqlite")
    async with run_daemon(workdir, control_dsn) as first:
        store = await first.add_org(org)
        await ingest(store, CRM, Changeset(upserts={"account": accounts(300)}))
        async with asyncio.timeout(30):
            await first.client(db, first.token(org), org).sync_once()
    async with run_daemon(workdir, control_dsn) as second:
        store = second.daemon.registry.get(org).staging  # type: ignore[union-attr]
        await ingest(store, CRM, Changeset(upserts={"account": accounts(3, owner=77)}))
        async with asyncio.timeout(30):
            stats = await second.client(db, second.token(org), org).sync_once()
        assert stats.rows_applied == 3  # resumed from the stored checkpoint, not from scratch
        assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
