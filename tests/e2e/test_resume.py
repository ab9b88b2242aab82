"""A device cut off mid-download resumes where it was and ends with exactly the right rows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.model import ClientModel
from syncd.store import Changeset, bulk_load
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, staging_rows
from tests.e2e.proxy import CuttingProxy
from tests.support.crm import accounts

ROWS = 60_000


async def sync_until_cut(
    running: RunningDaemon, db: LocalDB, org: str, proxy: CuttingProxy
) -> None:
    """A first sync through `proxy`, which cuts the link part way: it must fail as a drop."""
    port = await proxy.start()
    client = SyncClient(
        db,
        host="127.0.0.1",
        port=port,
        ssl_context=running.client_ssl(),
        server_hostname="localhost",
        token=running.token(org),
        org=org,
        compression=(),  # the cuts are placed in bytes of a plain download
    )
    with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(30):
            await client.sync_once()


async def test_cut_off_mid_download_resumes(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    store = await running.add_org(org)
    entity = ClientModel.parse(CRM).entity("account")
    pool = await store.pool()
    async with pool.acquire() as conn:
        rows = [tuple(r[c.name] for c in entity.columns) for r in accounts(ROWS)]
        await bulk_load(conn, entity, rows)
    db = LocalDB.open(tmp_path / "device.sqlite")
    proxy = CuttingProxy(running.port, cut_after_bytes=3_500_000)  # about 2/3 of the ~5 MB download
    try:
        await sync_until_cut(running, db, org, proxy)
        assert proxy.cut.is_set()
        assert db.checkpoint() is not None  # a mid-download checkpoint was stored
        kept = db.count("account")
        assert 0 < kept < ROWS
        # Someone changes a row the device already has while it is offline.
        await ingest(store, CRM, Changeset(upserts={"account": accounts(1, owner=99)}))
        async with asyncio.timeout(30):
            second = await running.client(db, running.token(org), org).sync_once()
    finally:
        await proxy.close()
    # Continued from the last checkpoint the device stored (at least checkpoint_rows
    # in), not from scratch; rows it applied past that checkpoint come again, harmlessly.
    every = running.config.sync.checkpoint_rows
    assert second.rows_applied <= ROWS - every + 2 * 1000
    assert device_rows(db, "account") == await staging_rows(store, CRM, "account")


MANAGER: dict[str, Any] = {
    "entities": {
        **CRM["entities"],
        "task": {"key": "code", "columns": {"code": "text", "title": "text"}},
    },
    "profiles": {"manager": {"offline": True, "entities": {"account": {}, "note": {}, "task": {}}}},
    "default_profile": "manager",
}
PER_ENTITY = 6_000


@pytest.mark.parametrize("cut_fraction", [0.2, 0.45, 0.7, 0.97])
async def test_sdk_cut_off_anywhere_in_a_multi_entity_download_resumes(
    workdir: Path, control_dsn: str, tmp_path: Path, cut_fraction: float
) -> None:
    """The issue's case: a manager's first sync of several entities cut at an arbitrary
    point (here: inside the first, second or last entity) must not start from zero."""
    async with run_daemon(workdir, control_dsn, batch_size=500, checkpoint_rows=2_000) as running:
        org = org_name()
        store = await running.add_org(org, MANAGER)
        changes: dict[str, list[dict[str, Any]]] = {
            "account": accounts(PER_ENTITY),
            "note": [{"id": i, "body": f"note {i}"} for i in range(PER_ENTITY)],
            "task": [{"code": f"t{i:06d}", "title": "call back"} for i in range(PER_ENTITY)],
        }
        await ingest(store, MANAGER, Changeset(upserts=changes))
        probe = LocalDB.open(tmp_path / "probe.sqlite")
        whole = await running.client(probe, running.token(org), org, compression=()).sync_once()
        total = 3 * PER_ENTITY
        db = LocalDB.open(tmp_path / "device.sqlite")
        cut_after = int(whole.bytes_received * cut_fraction)
        proxy = CuttingProxy(running.port, cut_after_bytes=cut_after)
        try:
            await sync_until_cut(running, db, org, proxy)
        finally:
            await proxy.close()
        kept = sum(db.count(e) for e in MANAGER["entities"])
        async with asyncio.timeout(30):
            second = await running.client(db, running.token(org), org).sync_once()
        # What it had committed at its last checkpoint is not sent again: at most one
        # checkpoint interval (plus the page that crossed it) is.
        assert second.rows_received <= total - kept + 2_000 + 500, (kept, second.rows_received)
        for entity in MANAGER["entities"]:
            assert device_rows(db, entity) == await staging_rows(store, MANAGER, entity)
