"""A device cut off mid-download resumes where it was and ends with exactly the right rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.model import ClientModel
from syncd.store import Changeset, bulk_load
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name
from tests.e2e.helpers import device_rows, staging_rows
from tests.e2e.proxy import CuttingProxy
from tests.e2e.test_sync import accounts

ROWS = 60_000


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
    port = await proxy.start()
    try:
        first = SyncClient(
            db,
            host="127.0.0.1",
            port=port,
            ssl_context=running.client_ssl(),
            server_hostname="localhost",
            token=running.token(org),
            org=org,
        )
        with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(30):
                await first.sync_once()
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
