"""Drain, health endpoints and model changes, seen from real devices."""

from __future__ import annotations

import asyncio
import copy
import socket
from pathlib import Path

import pytest

from protocol import ErrorCode
from syncd.client import LocalDB
from syncd.client.session import ServerError
from syncd.store import Changeset
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, put_model, staging_rows
from tests.support.crm import accounts, notes, with_task_entity


async def test_model_change_reaches_live_device_and_touches_only_new_entity(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(200), "note": notes(5)}))
    db = LocalDB.open(tmp_path / "device.sqlite")
    client = running.client(db, running.token(org), org)
    stop = asyncio.Event()
    live = asyncio.create_task(client.run_live(stop))
    try:
        async with asyncio.timeout(30):
            await client.caught_up.wait()
            before = client.stats.rows_received
            model = with_task_entity()
            await put_model(running, org, model)
            await ingest(store, model, Changeset(upserts={"task": [{"id": 1, "title": "call"}]}))
            while "task" not in db.entities() or db.count("task") != 1:
                client.checkpoint_applied.clear()
                await client.checkpoint_applied.wait()
        assert client.stats.rows_received - before == 1  # accounts and notes were not re-sent
        assert device_rows(db, "account") == await staging_rows(store, CRM, "account")
    finally:
        stop.set()
        await asyncio.wait_for(live, 10)


async def test_reconnect_after_model_change_redownloads_only_changed_entity(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(100), "note": notes(5)}))
    db = LocalDB.open(tmp_path / "device.sqlite")
    async with asyncio.timeout(30):
        await running.client(db, running.token(org), org).sync_once()
        model = copy.deepcopy(CRM)
        model["entities"]["note"]["columns"]["author"] = "text"  # note's schema changes
        await put_model(running, org, model)
        stats = await running.client(db, running.token(org), org).sync_once()
    assert stats.rows_applied == 5  # the notes again, with their new column; no account
    assert device_rows(db, "note") == await staging_rows(store, model, "note")
    assert device_rows(db, "account") == await staging_rows(store, CRM, "account")


async def test_shutdown_sends_going_away_with_retry_after(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    org = org_name()
    db = LocalDB.open(tmp_path / "device.sqlite")
    async with run_daemon(workdir, control_dsn, drain_retry_after_seconds=7) as running:
        await running.add_org(org)
        client = running.client(db, running.token(org), org)
        async with asyncio.timeout(30):
            await client.connect()
            pump = asyncio.create_task(client._pump(until_caught_up=False))
            await client.caught_up.wait()
            await running.daemon.shutdown()
            with pytest.raises(ServerError) as info:
                await pump
    assert info.value.code is ErrorCode.GOING_AWAY
    assert info.value.retry_after_ms == 7000
    await client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_ops_endpoints_report_ready_and_metrics(
    workdir: Path, control_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    async with run_daemon(workdir, control_dsn, ops=f"127.0.0.1:{port}") as running:
        org = org_name()
        store = await running.add_org(org)
        await ingest(store, CRM, Changeset(upserts={"account": accounts(50)}))
        db = LocalDB.open(tmp_path / "device.sqlite")
        async with asyncio.timeout(30):
            await running.client(db, running.token(org), org).sync_once()
            status, _ = await http_get(port, "/readyz")
            assert status == 200
            status, metrics = await http_get(port, "/metrics")
        assert status == 200
        assert f'syncd_rows_sent_total{{entity="account",org="{org}"}} 50.0' in metrics.decode()
        assert f'syncd_sessions_opened_total{{org="{org}"}} 1.0' in metrics.decode()
        assert f'syncd_db_pool_connections{{org="{org}",state="idle"}}' in metrics.decode()
        status, _ = await http_get(port, "/livez")
        assert status == 200
        running.daemon.draining = True  # what shutdown sets first
        status, body = await http_get(port, "/readyz")
        assert status == 503
        assert b"draining" in body
