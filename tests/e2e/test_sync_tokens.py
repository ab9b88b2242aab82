"""Sync tokens are the server's word, bound to whom it was given (ARCHITECTURE.md decision 8).

Every token that is not one this server sealed for this org incarnation, user and device is
answered after Welcome with `resync` of everything (CHECKPOINT_INVALID), and the device ends
with exactly its own rows; never a silent gap, never INTERNAL_ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest

from protocol import (
    NEED_DATA,
    Ack,
    CaughtUp,
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    Hello,
    Message,
    Resync,
    Role,
)
from syncd.client import LocalDB
from syncd.ctl import AdminClient
from syncd.model import ClientModel, ModelError
from syncd.server.sync_token import Binding, SyncToken
from syncd.store import Changeset, Snapshot, StagingStore
from tests.e2e.conftest import CRM, RunningDaemon, ingest, org_name, run_daemon
from tests.e2e.helpers import device_rows, staging_rows
from tests.e2e.wire_device import Session, WireDevice
from tests.support.crm import accounts

pytestmark = pytest.mark.timeout(120)


async def staging_keys(store: StagingStore, entity: str = "account") -> set[Any]:
    return {r[0] for r in await store.fetch(f"SELECT id::text FROM {entity}")}


def started_over(session: Session, code: ErrorCode = ErrorCode.CHECKPOINT_INVALID) -> None:
    """The spec'd answer: resync of everything right after Welcome, then a full download."""
    assert not session.of(Error), session.of(Error)
    resyncs = session.of(Resync)
    assert [(r.entities, r.code) for r in resyncs] == [(None, code)]
    first_after_welcome = session.messages[1]
    assert first_after_welcome == resyncs[0]
    assert session.of(CaughtUp)


async def org_with_accounts(running: RunningDaemon, count: int, owner: int = 7) -> tuple[str, Any]:
    org = org_name()
    store = await running.add_org(org)
    await ingest(store, CRM, Changeset(upserts={"account": accounts(count, owner=owner)}))
    return org, store


async def test_token_of_another_org_downloads_everything(running: RunningDaemon) -> None:
    other, _ = await org_with_accounts(running, 3)
    mine, store = await org_with_accounts(running, 312)
    device = WireDevice(running, other)
    await device.sync()
    assert device.count() == 3
    device.org = mine  # the same device now signs in to another org, keeping the token
    session = await device.sync()
    started_over(session)
    assert device.keys("account") == await staging_keys(store)
    assert len(device.keys("account")) == 312


async def test_org_removed_and_added_again_is_a_new_incarnation(running: RunningDaemon) -> None:
    org, store = await org_with_accounts(running, 20)
    device = WireDevice(running, org)
    await device.sync()
    assert device.keys("account") == await staging_keys(store)
    async with await AdminClient.open_unix(running.base / "admin.sock") as admin:
        await admin.call("org.remove", {"name": org})
        await admin.call("org.add", {"name": org})
        await admin.call("model.put", {"org": org, "model": CRM})
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    new_rows = accounts(5, owner=7)
    await ingest(runtime.staging, CRM, Changeset(upserts={"account": new_rows}))
    session = await device.sync()
    started_over(session)
    # Rows of the removed org are gone from the device; it holds exactly the new ones.
    assert device.keys("account") == await staging_keys(runtime.staging)
    assert len(device.keys("account")) == 5


async def test_sibling_device_of_the_same_user_cannot_borrow_a_token(
    running: RunningDaemon,
) -> None:
    org, store = await org_with_accounts(running, 10)
    early = WireDevice(running, org, device_id="tablet")
    await early.sync()
    await ingest(store, CRM, Changeset(upserts={"account": accounts(4, owner=7, start=100)}))
    sibling = WireDevice(running, org, device_id="phone")
    await sibling.sync()
    # The tablet presents the phone's newer token: it would miss the 4 rows in between.
    early.checkpoint = sibling.checkpoint
    session = await early.sync()
    started_over(session)
    assert early.keys("account") == await staging_keys(store)
    assert len(early.keys("account")) == 14


async def test_another_user_cannot_use_a_token(running: RunningDaemon) -> None:
    org, store = await org_with_accounts(running, 6)
    mine = WireDevice(running, org, user="7", device_id="shared-device")
    await mine.sync()
    theirs = WireDevice(running, org, user="8", device_id="shared-device")
    theirs.checkpoint = mine.checkpoint
    started_over(await theirs.sync())
    assert theirs.keys("account") == await staging_keys(store)


async def test_phone_backup_restored_on_a_new_device_id_ends_correct(
    running: RunningDaemon,
) -> None:
    org, store = await org_with_accounts(running, 8)
    old_phone = WireDevice(running, org, device_id="old-phone")
    await old_phone.sync()
    gone = sorted(old_phone.keys("account"))[:3]
    await ingest(store, CRM, Changeset(deletes={"account": gone}))
    new_phone = WireDevice(
        running,
        org,
        device_id="new-phone",
        checkpoint=old_phone.checkpoint,
        rows={k: dict(v) for k, v in old_phone.rows.items()},
    )
    started_over(await new_phone.sync())
    assert new_phone.keys("account") == await staging_keys(store)
    assert not set(gone) & new_phone.keys("account")


def _flip(token: bytes, index: int) -> bytes:
    tampered = bytearray(token)
    tampered[index] ^= 0x01
    return bytes(tampered)


@pytest.mark.parametrize(
    "forge",
    [
        "random bytes",
        "old format snapshot 2^40",
        "flipped byte in the snapshot",
        "flipped byte in the MAC",
        "truncated",
    ],
)
async def test_forged_or_tampered_tokens_start_over_without_an_internal_error(
    running: RunningDaemon, forge: str, caplog: pytest.LogCaptureFixture
) -> None:
    org, store = await org_with_accounts(running, 12)
    device = WireDevice(running, org)
    await device.sync()
    real = device.checkpoint
    assert real is not None
    device.checkpoint = {
        "random bytes": uuid.uuid4().bytes * 4,
        "old format snapshot 2^40": msgpack.packb(
            [1, msgpack.packb([1, 2**40, 2**40, []]), {"account": "0" * 16}]
        ),
        "flipped byte in the snapshot": _flip(real, 8),
        "flipped byte in the MAC": _flip(real, len(real) - 1),
        "truncated": real[:-5],
    }[forge]
    with caplog.at_level(logging.WARNING):
        session = await device.sync()
    started_over(session)
    assert device.keys("account") == await staging_keys(store)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_snapshot_this_database_never_took_starts_over(running: RunningDaemon) -> None:
    """A token the server did seal, but for a snapshot ahead of the staging database (it
    was restored from a backup, say): starting there would silently skip everything."""
    org, store = await org_with_accounts(running, 9)
    device = WireDevice(running, org, device_id="restored")
    await device.sync()
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    tokens = registry.tokens
    binding = Binding(runtime.record.incarnation.bytes, "7", "restored")
    assert device.checkpoint is not None
    issued = await tokens.open(device.checkpoint, binding)
    cp = issued.checkpoint
    future = Snapshot(cp.xmin + 100_000, cp.xmax + 100_000)
    device.checkpoint = tokens.seal(SyncToken(future, issued.plan, at=datetime.now(UTC)), binding)
    started_over(await device.sync())
    assert device.keys("account") == await staging_keys(store)


async def test_three_hundred_entities_sync_end_to_end_with_a_small_token(
    running: RunningDaemon,
) -> None:
    entities = {
        f"entity_{i:03d}": {"key": "id", "columns": {"id": "integer", "label": "text"}}
        for i in range(300)
    }
    model = {
        "entities": entities,
        "profiles": {"all": {"offline": True, "entities": {name: {} for name in entities}}},
        "default_profile": "all",
    }
    org = org_name()
    store = await running.add_org(org, model)
    upserts = {name: [{"id": i, "label": f"{name}-{i}"} for i in range(2)] for name in entities}
    await ingest(store, model, Changeset(upserts=upserts))
    device = WireDevice(running, org)
    session = await device.sync()
    assert session.of(CaughtUp), session.messages[-1]
    assert device.count() == 600
    assert device.checkpoint is not None
    assert len(device.checkpoint) < 150
    # Resuming works too, and a change to one entity brings just that row.
    await ingest(store, model, Changeset(upserts={"entity_150": [{"id": 9, "label": "late"}]}))
    again = await device.sync()
    assert not again.of(Resync)
    assert again.rows_received == 1
    assert device.keys("entity_150") == {0, 1, 9}


def test_the_model_validator_refuses_a_profile_a_token_cannot_follow() -> None:
    entities = {f"e{i}": {"key": "id", "columns": {"id": "integer"}} for i in range(1001)}
    model = {
        "entities": entities,
        "profiles": {"big": {"offline": True, "entities": {n: {} for n in entities}}},
    }
    with pytest.raises(ModelError, match="at most 1000") as info:
        ClientModel.parse(model)
    assert info.value.path == "profiles.big.entities"


async def test_token_keys_rotate_without_resyncing_and_retire_with_a_clean_start(
    running: RunningDaemon,
) -> None:
    org, store = await org_with_accounts(running, 5)
    device = WireDevice(running, org)
    await device.sync()
    sealed_with_first_key = device.checkpoint
    async with await AdminClient.open_unix(running.base / "admin.sock") as admin:
        rotated = await admin.call("token-key.rotate")
        after_rotation = await device.sync()
        assert not after_rotation.of(Resync)  # the old key still opens its tokens
        assert after_rotation.rows_received == 0
        assert device.checkpoint != sealed_with_first_key  # re-sealed with the new key
        listed = await admin.call("token-key.list")
        assert [k["id"] for k in listed] == [1, rotated["id"]]
        await admin.call("token-key.retire", {"id": 1})
        later = accounts(1, owner=7, start=100)
        await ingest(store, CRM, Changeset(upserts={"account": later}))
        current = await device.sync()  # its token is sealed with the new key: incremental
        assert not current.of(Resync)
        assert current.rows_received == 1
        stale = WireDevice(running, org, checkpoint=sealed_with_first_key)
        started_over(await stale.sync())
        assert stale.keys("account") == await staging_keys(store)


async def test_an_ack_of_a_token_this_session_did_not_send_ends_it(
    running: RunningDaemon,
) -> None:
    org, _ = await org_with_accounts(running, 2)
    other = WireDevice(running, org, device_id="someone-else")
    await other.sync()
    device = WireDevice(running, org, device_id="acker")
    # Ack the other device's token instead of our own: a protocol violation.
    device.checkpoint = None
    session = await _sync_acking(device, other.checkpoint)
    errors = session.of(Error)
    assert [e.code for e in errors] == [ErrorCode.CHECKPOINT_INVALID]


async def _sync_acking(device: WireDevice, token: bytes | None) -> Session:
    """Sync, but answer caught_up with an Ack of `token`."""
    running = device.running
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=running.client_ssl(), server_hostname="localhost"
    )
    conn = Connection(Role.DEVICE)
    hello = Hello((1,), running.token(device.org), device.org, device.device_id, "w/1", None)
    writer.write(conn.send(hello))
    session = Session()
    try:
        async with asyncio.timeout(20):
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, ConnectionClosed):
                    return session
                assert isinstance(event, Message)
                session.messages.append(event)
                if isinstance(event, Error):
                    return session
                if isinstance(event, CaughtUp):
                    assert token is not None
                    writer.write(conn.send(Ack(checkpoint=token)))
    finally:
        writer.close()


async def compact_past_now(store: StagingStore) -> None:
    """Trim the change log up to the present, as retention eventually does."""
    await ingest(store, CRM, Changeset(upserts={"account": accounts(1, owner=7, start=500)}))
    now = Snapshot.from_pg((await store.fetch("SELECT pg_current_snapshot()"))[0][0])
    await store.compact(horizon=now)


async def test_a_token_past_the_retained_history_starts_over(running: RunningDaemon) -> None:
    org, store = await org_with_accounts(running, 7)
    device = WireDevice(running, org)
    await device.sync()
    gone = sorted(device.keys("account"))[:2]
    await ingest(store, CRM, Changeset(deletes={"account": gone}))
    await compact_past_now(store)
    started_over(await device.sync(), ErrorCode.CHECKPOINT_TOO_OLD)
    assert device.keys("account") == await staging_keys(store)


async def test_a_download_cut_off_before_the_history_was_trimmed_starts_over(
    workdir: Path, control_dsn: str
) -> None:
    async with run_daemon(workdir, control_dsn, batch_size=50, checkpoint_rows=100) as running:
        org, store = await org_with_accounts(running, 400)
        device = WireDevice(running, org)
        await device.sync(cut_after_changes=4)
        assert device.checkpoint is not None  # a mid-download checkpoint
        assert 0 < device.count() < 400
        await compact_past_now(store)
        started_over(await device.sync(), ErrorCode.CHECKPOINT_TOO_OLD)
        assert device.keys("account") == await staging_keys(store)


async def test_a_token_whose_plan_was_pruned_starts_over(running: RunningDaemon) -> None:
    org, store = await org_with_accounts(running, 3)
    device = WireDevice(running, org)
    await device.sync()
    registry = running.daemon.registry
    assert registry is not None
    # Every plan unused for "no time at all" goes, as it would after the retention period.
    assert await registry.tokens.prune(timedelta(0)) >= 1
    started_over(await device.sync(), ErrorCode.CHECKPOINT_TOO_OLD)
    assert device.keys("account") == await staging_keys(store)
    again = await device.sync()  # and the plan is kept again for the new token
    assert not again.of(Resync)


async def test_sdk_backup_restored_on_a_new_device_id_keeps_its_edit_and_ends_exact(
    running: RunningDaemon, tmp_path: Path
) -> None:
    """The phone's SQLite file (rows, token, an unsent edit) restored onto a phone that
    identifies itself with a new device id: the token is refused for it, the device starts
    over in the same session, the edit still goes up, and the rows are exactly staging's."""
    org, store = await org_with_accounts(running, 10)
    old = LocalDB.open(tmp_path / "old.sqlite")
    await running.client(old, running.token(org), org, device_id="old-phone").sync_once()
    key = sorted(await staging_keys(store))[0]
    old.update("account", key, {"name": "edited offline"})
    old.close()
    shutil.copy(tmp_path / "old.sqlite", tmp_path / "restored.sqlite")
    gone = sorted(await staging_keys(store))[-2:]
    await ingest(store, CRM, Changeset(deletes={"account": [uuid.UUID(k) for k in gone]}))
    restored = LocalDB.open(tmp_path / "restored.sqlite")
    assert restored.pending_count() == 1
    await running.client(restored, running.token(org), org, device_id="new-phone").sync_once()
    assert restored.pending_count() == 0
    assert not restored.errors()
    assert device_rows(restored, "account") == await staging_rows(store, CRM, "account")
    names = {r[0]: r[1] for r in await store.fetch("SELECT id::text, name FROM account")}
    assert names[key] == "edited offline"
