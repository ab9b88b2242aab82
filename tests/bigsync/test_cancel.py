"""An app that cancels `sync_once` mid-download (as bench.firstsync does to cut a download)
leaves no task of it behind, and the rows it committed stay with their checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from syncd.client import LocalDB
from syncd.client.session import SyncStats
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.support.crm import CRM, accounts

pytestmark = pytest.mark.timeout(120)


async def test_cancelling_sync_once_leaves_no_task_behind(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org, CRM)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(30_000)}))
    with LocalDB.open(tmp_path / "d.db") as db:
        first_commit = asyncio.Event()

        def progress(_stats: SyncStats) -> None:
            first_commit.set()

        client = running.client(db, running.token(org), org, on_progress=progress)
        before = asyncio.all_tasks()
        task = asyncio.create_task(client.sync_once())
        waiter = asyncio.create_task(first_commit.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), "the download finished before the cut: make it bigger"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
        await asyncio.sleep(0)  # one turn of the loop for cancelled tasks to finish
        # The daemon runs in this loop too: only the client's own tasks count.
        left = [
            t
            for t in asyncio.all_tasks() - before
            if not t.done() and "SyncClient." in repr(t.get_coro())
        ]
        waiter.cancel()
        assert left == [], left
        committed = db.count("account")
        assert committed > 0
        # The next sync resumes from the stored checkpoint and completes.
        await running.client(db, running.token(org), org).sync_once()
        assert db.count("account") == 30_000
