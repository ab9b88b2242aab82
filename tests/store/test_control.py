"""Control database: migrations, orgs, versioned models, assignments, devices and sessions."""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import CONFIG_CHANNEL, ControlStore, Listener, Snapshot
from syncd.store.control import MIGRATIONS
from syncd.store.devices import SessionEnd
from tests.conftest import CRM_MODEL


async def test_concurrent_migrations_apply_once(control: ControlStore) -> None:
    results = await asyncio.gather(control.migrate(), control.migrate(), control.migrate())
    assert len(set(results)) == 1


async def test_orgs(control: ControlStore) -> None:
    await control.add_org("acme")
    await control.add_org("globex", staging_dsn="postgresql://elsewhere/globex")
    with pytest.raises(ValueError, match="invalid org name"):
        await control.add_org("Bad-Name")
    with pytest.raises(asyncpg.UniqueViolationError):
        await control.add_org("acme")
    assert [o.name for o in await control.list_orgs()] == ["acme", "globex"]
    globex = await control.get_org("globex")
    assert globex is not None
    assert globex.staging_dsn == "postgresql://elsewhere/globex"
    assert globex.status == "active"
    assert await control.remove_org("acme")
    assert await control.get_org("acme") is None


async def test_models_are_versioned_and_keep_column_order(control: ControlStore) -> None:
    await control.add_org("acme")
    assert await control.get_model("acme") is None
    first = ClientModel.parse(CRM_MODEL)
    doc = copy.deepcopy(CRM_MODEL)
    doc["entities"]["note"]["columns"] = {"body": "text", "id": "integer"}
    second = ClientModel.parse(doc)
    assert await control.put_model("acme", first) == 1
    assert await control.put_model("acme", second) == 2
    live = await control.get_model("acme")
    assert live is not None
    assert live.version == 2
    assert live.model == second
    assert [c.name for c in live.model.entity("note").columns] == ["body", "id"]
    old = await control.get_model("acme", 1)
    assert old is not None
    assert old.model == first
    with pytest.raises(KeyError):
        await control.put_model("nobody", first)


async def test_assignments_and_devices(control: ControlStore) -> None:
    await control.add_org("acme")
    await control.assign_profile("acme", "u1", "field_sales")
    await control.assign_profile("acme", "u1", "managers")
    assert await control.get_profile("acme", "u1") == "managers"
    assert await control.list_assignments("acme") == {"u1": "managers"}
    await control.unassign_profile("acme", "u1")
    assert await control.get_profile("acme", "u1") is None


async def test_devices_keep_their_last_checkpoint_per_user(control: ControlStore) -> None:
    await control.add_org("acme")
    devices, instance = control.devices, uuid.uuid4()
    await devices.register_instance(instance, "host-a")
    cp, at = Snapshot(10, 20, (12,)), datetime(2026, 1, 1, tzinfo=UTC)
    await devices.session_opened(instance, "s1", "acme", "d1", "u1", "app/1")
    (d1,) = await devices.find(org="acme", connected=True)
    assert (d1.device_id, d1.user_id, d1.app_version, d1.checkpoint) == ("d1", "u1", "app/1", None)
    assert [s.instance for s in d1.sessions] == ["host-a"]
    await devices.session_closed(SessionEnd("s1", "acme", "d1", cp, at, "IDLE_TIMEOUT: quiet"))
    assert await devices.find(org="acme", connected=True) == []
    (d1,) = await devices.find(org="acme")
    assert (d1.checkpoint, d1.checkpoint_at, d1.last_error) == (cp, at, "IDLE_TIMEOUT: quiet")
    # The same user again keeps the position; another user on the device must not.
    await devices.session_opened(instance, "s2", "acme", "d1", "u1", "app/2")
    (d1,) = await devices.find(org="acme")
    assert (d1.checkpoint, d1.app_version) == (cp, "app/2")
    await devices.session_opened(instance, "s3", "acme", "d1", "u2", "app/2")
    (d1,) = await devices.find(org="acme", user_id="u2")
    assert (d1.checkpoint, d1.checkpoint_at) == (None, None)
    # A clean shutdown takes the instance's sessions with it.
    await devices.unregister_instance(instance)
    assert await devices.find(org="acme", connected=True) == []


async def test_an_instance_taken_for_gone_comes_back_with_its_sessions(
    control: ControlStore,
) -> None:
    """After a control-database outage every heartbeat is late: the first instance to beat
    deletes the others, which register again, sessions included, at their next beat."""
    await control.add_org("acme")
    devices, a, b = control.devices, uuid.uuid4(), uuid.uuid4()
    await devices.register_instance(a, "host-a")
    await devices.register_instance(b, "host-b")
    await devices.session_opened(a, "s1", "acme", "d1", "u1", "app/1", instance_name="host-a")
    assert not await devices.heartbeat(b, "host-b", [], timedelta(0))  # deletes a
    assert await devices.find(org="acme", connected=True) == []
    # A new session of `a` opens before its next beat: its row comes back with it.
    await devices.session_opened(a, "s2", "acme", "d2", "u1", "app/1", instance_name="host-a")
    live = [("s1", "acme", "d1", "u1"), ("s2", "acme", "d2", "u1")]
    await devices.heartbeat(b, "host-b", [], timedelta(0))  # deletes a again
    assert await devices.heartbeat(a, "host-a", [], timedelta(hours=1), live)
    connected = await devices.find(org="acme", connected=True)
    assert sorted((d.device_id, d.sessions[0].instance) for d in connected) == [
        ("d1", "host-a"),
        ("d2", "host-a"),
    ]


async def test_config_changes_are_notified(control: ControlStore) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    listener = Listener(control.connect_listener, CONFIG_CHANNEL, got.put_nowait)
    await listener.start()
    try:
        async with asyncio.timeout(30):
            await control.add_org("acme")
            assert await got.get() == "acme"
            await control.put_model("acme", ClientModel.parse(CRM_MODEL))
            assert await got.get() == "acme"
    finally:
        await listener.close()


async def test_the_unused_upload_table_of_migration_1_is_gone(control: ControlStore) -> None:
    """Upload idempotency lives in each org's staging database (issue 15: dead schema)."""
    assert await control.migrate() == len(MIGRATIONS)
    tables = await control._pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    names = [t[0] for t in tables]
    assert "upload_batches" not in names
    assert {"orgs", "client_models", "devices", "token_keys", "sync_plans"} <= set(names)
    assert {"instances", "live_sessions", "revocations"} <= set(names)
