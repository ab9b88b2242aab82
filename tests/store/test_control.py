"""Control database: migrations, orgs, versioned models, assignments, device checkpoints."""

from __future__ import annotations

import asyncio
import copy

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import CONFIG_CHANNEL, Checkpoint, ControlStore, Listener
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

    cp = Checkpoint(10, 20, (12,))
    with pytest.raises(KeyError):
        await control.save_checkpoint("acme", "d1", cp)
    await control.register_device("acme", "d1", "u1")
    assert await control.load_checkpoint("acme", "d1") is None
    await control.save_checkpoint("acme", "d1", cp)
    assert await control.load_checkpoint("acme", "d1") == cp
    await control.register_device("acme", "d1", "u1")
    assert await control.load_checkpoint("acme", "d1") == cp
    await control.register_device("acme", "d2", "u2")
    await control.save_checkpoint("acme", "d2", Checkpoint(5, 6))
    assert await control.oldest_checkpoint("acme") == Checkpoint(5, 6)
    # Another user on the same device must not inherit the first user's position.
    await control.register_device("acme", "d1", "u2")
    assert await control.load_checkpoint("acme", "d1") is None


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
    assert await control.migrate() == 3
    tables = await control._pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    names = [t[0] for t in tables]
    assert "upload_batches" not in names
    assert {"orgs", "client_models", "devices", "token_keys", "sync_plans"} <= set(names)
