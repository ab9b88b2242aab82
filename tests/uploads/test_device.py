"""Offline edits through the real client SDK and a real daemon: nothing lost, nothing twice.

Each test edits a device's SQLite database offline, then syncs; "applied once" is checked on
the staging side (the write-back outbox holds one entry per applied op, the change log one
change per write) and "nothing lost" on both sides (device rows equal staging rows, empty
outbox, no recorded errors unless a conflict was expected).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from protocol import Upload, UploadOp, UploadResult
from syncd.client import LocalDB
from syncd.client.session import SyncClient
from syncd.store import Changeset, StagingStore
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, staging_rows

BOUND_S = 90


async def _org_with_accounts(running: RunningDaemon, n: int) -> tuple[str, StagingStore]:
    org = org_name()
    store = await running.add_org(org)
    rows = [{"id": uuid.uuid4(), "name": f"a{i}", "owner_id": 7, "status": 0} for i in range(n)]
    await ingest(store, CRM, Changeset(upserts={"account": rows}))
    return org, store


async def _scalar(store: StagingStore, sql: str, *args: Any) -> Any:
    return (await store.fetch(sql, *args))[0][0]


async def _assert_converged(store: StagingStore, *dbs: LocalDB) -> None:
    server = await staging_rows(store, CRM, "account")
    for db in dbs:
        assert db.pending_count() == 0
        assert device_rows(db, "account") == server


async def test_offline_edits_reach_the_server_and_other_devices(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org, store = await _org_with_accounts(running, 5)
    token = running.token(org)
    with LocalDB.open(tmp_path / "a.sqlite") as a, LocalDB.open(tmp_path / "b.sqlite") as b:
        async with asyncio.timeout(BOUND_S):
            await running.client(a, token, org).sync_once()
            key = a.rows("account")[0][0]
            a.update("account", key, {"name": "edited offline", "status": 3})
            a.insert("account", {"id": str(uuid.uuid4()), "name": "new", "status": 1})
            await running.client(a, token, org).sync_once()
            await running.client(b, token, org).sync_once()
        assert a.errors() == []
        await _assert_converged(store, a, b)
        assert await _scalar(store, "SELECT count(*) FROM _syncd_writeback") == 2


async def test_the_same_row_edited_offline_on_two_devices(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org, store = await _org_with_accounts(running, 1)
    token = running.token(org)
    with LocalDB.open(tmp_path / "a.sqlite") as a, LocalDB.open(tmp_path / "b.sqlite") as b:
        async with asyncio.timeout(BOUND_S):
            await running.client(a, token, org).sync_once()
            await running.client(b, token, org).sync_once()
            key = a.rows("account")[0][0]
            a.update("account", key, {"name": "from a"})
            b.update("account", key, {"name": "from b"})
            await running.client(a, token, org).sync_once()
            await running.client(b, token, org).sync_once()
            await running.client(a, token, org).sync_once()
        (error,) = b.errors()
        assert (error.kind, error.key) == ("conflict", key)
        assert b.get("account", key)[1] == "from a"  # type: ignore[index]
        await _assert_converged(store, a, b)


async def _send_without_completing(client: SyncClient, db: LocalDB) -> UploadResult | None:
    """Upload the in-flight batch and stop before `complete_upload`, like a crashed app."""
    batch = db.next_upload_batch(1000)
    assert batch is not None
    ops = tuple(
        UploadOp(
            op=o.op,
            entity=o.entity,
            key=o.key,
            base_version=o.base_version,
            values=None if o.op == "delete" else o.values,
        )
        for o in batch.ops
    )
    await client.connect()
    await client._send(Upload(batch_id=batch.batch_id, ops=ops))
    while True:
        message = await client._next()
        if isinstance(message, UploadResult):
            return message


async def test_client_crash_between_upload_and_acknowledgement(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org, store = await _org_with_accounts(running, 3)
    token = running.token(org)
    path = tmp_path / "a.sqlite"
    with LocalDB.open(path) as a:
        async with asyncio.timeout(BOUND_S):
            await running.client(a, token, org).sync_once()
            for key, *_ in a.rows("account"):
                a.update("account", key, {"status": 9})
            crashed = running.client(a, token, org)
            lost = await _send_without_completing(crashed, a)
            await crashed.close()
    assert lost is not None
    assert {r.status for r in lost.results} == {"applied"}
    with LocalDB.open(path) as a:  # the app restarts
        assert a.pending_count() == 3
        async with asyncio.timeout(BOUND_S):
            await running.client(a, token, org).sync_once()
        assert a.errors() == []
        await _assert_converged(store, a)
    assert await _scalar(store, "SELECT count(*) FROM _syncd_writeback") == 3


async def test_connection_dropped_mid_batch(running: RunningDaemon, tmp_path: Path) -> None:
    org, store = await _org_with_accounts(running, 0)
    token = running.token(org)
    with LocalDB.open(tmp_path / "a.sqlite") as a:
        async with asyncio.timeout(BOUND_S):
            await running.client(a, token, org).sync_once()
            for i in range(500):
                a.insert("account", {"id": str(uuid.uuid4()), "name": f"n{i}", "status": i})
            cut = running.client(a, token, org)
            batch = a.next_upload_batch(1000)
            assert batch is not None
            await cut.connect()
            ops = tuple(
                UploadOp(op="insert", entity="account", key=o.key, values=o.values)
                for o in batch.ops
            )
            await cut._send(Upload(batch_id=batch.batch_id, ops=ops))
            assert cut._writer is not None
            cut._writer.transport.abort()  # the link dies with the batch in flight
            await cut.close()
            await running.client(a, token, org).sync_once()
        assert a.errors() == []
        await _assert_converged(store, a)
    assert await _scalar(store, "SELECT count(*) FROM _syncd_writeback") == 500
    assert await _scalar(store, "SELECT count(*) FROM account") == 500


async def test_daemon_restart_mid_batch(workdir: Path, control_dsn: str, tmp_path: Path) -> None:
    with LocalDB.open(tmp_path / "a.sqlite") as a:
        async with asyncio.timeout(BOUND_S):
            async with run_daemon(workdir, control_dsn) as first:
                org, store = await _org_with_accounts(first, 0)
                token = first.token(org)
                await first.client(a, token, org).sync_once()
                for i in range(2000):
                    a.insert("account", {"id": str(uuid.uuid4()), "name": f"n{i}", "status": i})
                client = first.client(a, token, org)
                batch = a.next_upload_batch(2000)
                assert batch is not None
                await client.connect()
                ops = tuple(
                    UploadOp(op="insert", entity="account", key=o.key, values=o.values)
                    for o in batch.ops
                )
                await client._send(Upload(batch_id=batch.batch_id, ops=ops))
            await client.close()
            async with run_daemon(workdir, control_dsn) as second:
                await second.client(a, token, org).sync_once()
                assert a.errors() == []
                store = second.daemon.registry.stores.get(org)  # type: ignore[union-attr]
                await _assert_converged(store, a)
                assert await _scalar(store, "SELECT count(*) FROM _syncd_writeback") == 2000


async def test_ten_thousand_queued_offline_edits(running: RunningDaemon, tmp_path: Path) -> None:
    org, store = await _org_with_accounts(running, 2000)
    token = running.token(org)
    with LocalDB.open(tmp_path / "a.sqlite") as a:
        async with asyncio.timeout(BOUND_S):
            await running.client(a, token, org).sync_once()
            keys = [row[0] for row in a.rows("account")]
            for round_ in range(4):  # every row edited four times while offline
                for key in keys:
                    a.update("account", key, {"status": round_ + 1})
            for i in range(2000):
                a.insert("account", {"id": str(uuid.uuid4()), "name": f"n{i}", "status": 0})
            assert a.pending_count() == 10_000
            await running.client(a, token, org).sync_once()
        assert a.errors() == []
        await _assert_converged(store, a)
    assert await _scalar(store, "SELECT count(*) FROM _syncd_writeback") == 10_000
    assert await _scalar(store, "SELECT count(*) FROM account WHERE status = 4") == 2000
