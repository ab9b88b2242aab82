"""Downloads in storage order (``sync.initial_read_order = "storage"``, issue 16) on the real
daemon: a table rewritten mid-download (VACUUM FULL, between two pages of one session or
between two sessions) is re-sent after a Resync of that entity and the device ends with
exactly staging's rows; rows written during a download cut off and resumed converge.

The device is the protocol-level one of tests/e2e (written from PROTOCOL.md, committing at
checkpoints), so what is asserted is what travelled on the wire.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol import CaughtUp, Changes, ErrorCode, Resync
from syncd.model import ClientModel
from syncd.store import StagingStore, bulk_load
from tests.e2e.conftest import RunningDaemon, org_name, run_daemon
from tests.e2e.wire_device import Session, WireDevice

MODEL: dict[str, Any] = {
    "entities": {
        "account": {"key": "id", "columns": {"id": "uuid", "name": "text", "owner": "integer"}},
    },
    "profiles": {"manager": {"offline": True, "entities": {"account": {}}}},
    "default_profile": "manager",
}


def accounts(count: int) -> Iterator[tuple[Any, ...]]:
    for i in range(count):
        yield (uuid.uuid4(), f"Account {i}", i % 500)


@pytest.fixture
async def storage_order(workdir: Path, control_dsn: str) -> AsyncIterator[RunningDaemon]:
    # A short send queue: the daemon stops reading pages soon after the device stops reading.
    async with run_daemon(
        workdir,
        control_dsn,
        batch_size=1_000,
        checkpoint_rows=5_000,
        send_queue_frames=4,
        initial_read_order="storage",
    ) as running:
        yield running


async def load(running: RunningDaemon, count: int) -> tuple[str, StagingStore]:
    org = org_name()
    store = await running.add_org(org, MODEL)
    pool = await store.pool()
    async with pool.acquire() as conn:
        await bulk_load(conn, ClientModel.parse(MODEL).entity("account"), accounts(count))
        await conn.execute("ANALYZE account")
    return org, store


async def staging_rows(store: StagingStore) -> dict[str, int]:
    rows = await store.fetch("SELECT id::text, _version FROM account")
    return {r[0]: r[1] for r in rows}


def held(device: WireDevice) -> dict[str, int]:
    return {key: row[-1] for key, row in device.rows.get("account", {}).items()}


def keys_after_the_resync(session: Session) -> list[Any]:
    index = next(i for i, m in enumerate(session.messages) if isinstance(m, Resync))
    return [row[0] for m in session.messages[index:] if isinstance(m, Changes) for row in m.upserts]


def the_resync(session: Session) -> Resync:
    resyncs: list[Resync] = session.of(Resync)
    assert len(resyncs) == 1
    resync = resyncs[0]
    assert resync.entities == ("account",)
    assert resync.code == ErrorCode.CHECKPOINT_TOO_OLD
    return resync


@pytest.mark.timeout(300)
async def test_a_table_rewritten_between_two_pages_of_a_session_is_sent_again_whole(
    storage_order: RunningDaemon,
) -> None:
    org, store = await load(storage_order, 200_000)
    pool = await store.pool()
    await pool.execute("DELETE FROM account WHERE owner < 100")  # the rewrite moves rows
    device = WireDevice(storage_order, org, device_id="rewritten-mid-session")

    async def rewrite_once(changes: int) -> None:
        if changes == 3:  # the daemon has read a few pages and waits on the device
            await pool.execute("VACUUM FULL account")

    session = await device.sync(on_changes=rewrite_once)
    assert session.of(CaughtUp)
    the_resync(session)
    again = keys_after_the_resync(session)
    assert len(again) == len(set(again))  # after the Resync, every row once
    assert held(device) == await staging_rows(store)


@pytest.mark.timeout(300)
async def test_a_table_rewritten_between_two_sessions_is_sent_again_whole(
    storage_order: RunningDaemon,
) -> None:
    org, store = await load(storage_order, 50_000)
    pool = await store.pool()
    device = WireDevice(storage_order, org, device_id="rewritten-between-sessions")
    await device.sync(cut_after_changes=12)
    assert 0 < len(held(device)) < 50_000  # a checkpoint inside the download
    await pool.execute("DELETE FROM account WHERE owner < 100")
    await pool.execute("VACUUM FULL account")
    session = await device.sync()
    assert session.of(CaughtUp)
    the_resync(session)
    again = keys_after_the_resync(session)
    assert len(again) == len(set(again))
    assert held(device) == await staging_rows(store)


@pytest.mark.timeout(300)
async def test_writes_during_a_cut_storage_order_download_converge(
    storage_order: RunningDaemon,
) -> None:
    """Updated rows get a new tuple elsewhere in the heap (``_txid`` is indexed, so no update
    is HOT), some in blocks already sent and some in blocks not read yet; deleted and new
    rows too. The resumed download skips every row written after its snapshot, the window
    after it sends them, and the device ends with staging's rows at their versions."""
    org, store = await load(storage_order, 50_000)
    pool = await store.pool()
    device = WireDevice(storage_order, org, device_id="written-during")
    for cut in (9, 7):
        await device.sync(cut_after_changes=cut)
        await pool.execute("UPDATE account SET name = name || '!' WHERE owner % 3 = 0")
        await pool.execute("DELETE FROM account WHERE owner % 50 = 1")
        await pool.execute(
            "INSERT INTO account (id, name, owner)"
            " SELECT gen_random_uuid(), 'new', 7 FROM generate_series(1, 500)"
        )
    assert 0 < len(held(device)) < 50_000
    session = await device.sync()
    assert session.of(CaughtUp)
    assert not session.of(Resync)
    assert held(device) == await staging_rows(store)
