"""First downloads run under a budget, in all and per org; devices over it are paced.

The first download is held in progress the way a big one would be: a test transaction locks
the staging table, so its first page waits. A device's Welcome means it was admitted (the
slot is taken before Welcome is sent). Nothing here sleeps to synchronize.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from syncd.client import LocalDB, ServerBusy
from syncd.store import Changeset, StagingStore
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.support.crm import accounts

pytestmark = pytest.mark.timeout(90)

BASE_MS = 400


@pytest.fixture
async def paced(workdir: Path, control_dsn: str) -> AsyncIterator[RunningDaemon]:
    async with run_daemon(
        workdir,
        control_dsn,
        max_first_downloads=2,
        max_first_downloads_per_org=1,
        busy_retry_after_seconds=BASE_MS / 1000,
    ) as running:
        yield running


async def locked(store: StagingStore) -> asyncpg.Connection:
    """A connection holding the account table: every read of it waits until it lets go."""
    conn = await (await store.pool()).acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE account IN ACCESS EXCLUSIVE MODE")
    return conn


async def test_a_second_first_download_of_an_org_is_paced_and_a_resuming_device_is_not(
    paced: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await paced.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(50)}))
    resuming_db = LocalDB.open(tmp_path / "resuming.sqlite")
    async with asyncio.timeout(30):
        await paced.client(resuming_db, paced.token(org), org).sync_once()  # has a token now

    lock = await locked(store)
    first = paced.client(LocalDB.open(tmp_path / "first.sqlite"), paced.token(org), org)
    try:
        async with asyncio.timeout(30):
            await first.connect()  # admitted; its first page waits for the lock
            second = paced.client(LocalDB.open(tmp_path / "second.sqlite"), paced.token(org), org)
            with pytest.raises(ServerBusy) as busy:
                await second.connect()
            await second.close()
            assert busy.value.retry_after_ms is not None
            assert BASE_MS <= busy.value.retry_after_ms < 2 * BASE_MS
            # A device with a token is let in whatever the budget.
            again = paced.client(resuming_db, paced.token(org), org)
            await again.connect()
            await again.close()
    finally:
        await lock.execute("ROLLBACK")
        await (await store.pool()).release(lock)
        await first.close()
    # The refused device keeps trying as the SDK does (never sooner than retry_after_ms) and
    # is let in once the first session has ended.
    stop = asyncio.Event()
    live = asyncio.create_task(second.run_live(stop))
    async with asyncio.timeout(30):
        await second.caught_up.wait()
    stop.set()
    async with asyncio.timeout(10):
        await live
    assert second.stats.rows_received == 50


async def test_one_orgs_first_downloads_leave_room_for_another_org(
    paced: RunningDaemon, tmp_path: Path
) -> None:
    busy_org, other_org = org_name(), org_name()
    busy_store = await paced.add_org(busy_org)
    other_store = await paced.add_org(other_org)
    for store in (busy_store, other_store):
        await ingest(store, CRM, Changeset(upserts={"account": accounts(20)}))
    lock = await locked(busy_store)
    first = paced.client(LocalDB.open(tmp_path / "a.sqlite"), paced.token(busy_org), busy_org)
    try:
        async with asyncio.timeout(30):
            await first.connect()  # the busy org's one slot is taken
            refused = paced.client(
                LocalDB.open(tmp_path / "a2.sqlite"), paced.token(busy_org), busy_org
            )
            with pytest.raises(ServerBusy):
                await refused.connect()
            await refused.close()
            db = LocalDB.open(tmp_path / "b.sqlite")
            stats = await paced.client(db, paced.token(other_org), other_org).sync_once()
        assert stats.rows_received == 20  # served while the busy org is at its budget
    finally:
        await lock.execute("ROLLBACK")
        await (await busy_store.pool()).release(lock)
        await first.close()
