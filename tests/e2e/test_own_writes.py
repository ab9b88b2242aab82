"""A device holds the rows it wrote itself, and the feed accounts for them.

What a device holds is its token's snapshot plus its own uploads since. When a row the device
inserted (or updated) leaves its filters, or is deleted, in the same window as the upload,
the before-images know nothing of it: only the own-writes pass (feed.own_leavers) sends the
delete, on the catch-up path and on the live hub alike, and only to the device that wrote
it (nobody else learns the key).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from protocol import Changes, Resync
from syncd.client import LocalDB
from syncd.ctl import AdminClient
from tests.e2e.conftest import RunningDaemon, org_name
from tests.e2e.wire_device import WireDevice

pytestmark = pytest.mark.timeout(60)

MODEL: dict[str, Any] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {"id": "uuid", "name": "text", "owner_id": "integer"},
            "writable": ["name", "owner_id"],
        }
    },
    "profiles": {
        "mine": {"offline": True, "entities": {"account": {"filter": {"owner": "owner_id"}}}}
    },
    "default_profile": "mine",
}


async def upload_as(running: RunningDaemon, org: str, tmp: Path, device: str, key: str) -> None:
    """Device `device` of user 7 inserts account `key` and uploads it (the SDK, real TLS)."""
    db = LocalDB.open(tmp / f"{device}-{key[:8]}.sqlite")
    client = running.client(db, running.token(org), org, device_id=device)
    async with asyncio.timeout(20):
        await client.sync_once()
        db.insert("account", {"id": key, "name": "mine", "owner_id": 7})
        await client.sync_once()
    assert db.pending_count() == 0
    assert not db.errors()
    db.close()


async def test_catch_up_removes_an_own_insert_that_left_the_filter(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org, MODEL)
    writer = WireDevice(running, org, device_id="phone")
    bystander = WireDevice(running, org, device_id="tablet")
    await writer.sync()
    await bystander.sync()
    key = str(uuid.uuid4())
    await upload_as(running, org, tmp_path, "phone", key)
    # The phone keeps its insert (settled from the result) with its older token...
    writer.rows.setdefault("account", {})[key] = (key, "mine", 7, 0)
    # ...and before it syncs again the row goes to another owner.
    await store.fetch("UPDATE account SET owner_id = 8 WHERE id = $1", uuid.UUID(key))
    session = await writer.sync()
    assert key not in writer.keys("account")
    assert [d for c in session.messages if hasattr(c, "deletes") for d in c.deletes] == [key]
    # The tablet (same user, another device) never had it and is told nothing about it.
    other = await bystander.sync()
    assert not [d for c in other.messages if hasattr(c, "deletes") for d in c.deletes]


async def test_live_hub_removes_an_own_insert_that_left_the_filter_in_the_same_window(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org, MODEL)
    registry = running.daemon.registry
    assert registry is not None
    runtime = registry.get(org)
    assert runtime is not None
    key = str(uuid.uuid4())
    writer = WireDevice(running, org, device_id="phone")
    live = asyncio.Event()
    deleted = asyncio.Event()

    def gone(device: WireDevice) -> bool:
        if uploaded.is_set() and key not in device.keys("account"):
            deleted.set()
            return True
        return False

    uploaded = asyncio.Event()
    session = asyncio.create_task(writer.sync(live=live, until=gone))
    await asyncio.wait_for(live.wait(), 20)
    # Hold the org's live hub so that the upload and the move land in one window (the hub
    # takes a window per wake-up; a busy hub coalesces commits the same way).
    async with runtime.hub._lock:
        await upload_as(running, org, tmp_path, "phone", key)
        writer.rows.setdefault("account", {})[key] = (key, "mine", 7, 0)  # settled, as the SDK
        await store.fetch("UPDATE account SET owner_id = 8 WHERE id = $1", uuid.UUID(key))
        uploaded.set()
    await asyncio.wait_for(deleted.wait(), 20)
    await asyncio.wait_for(session, 20)
    assert writer.keys("account") == set()


RANGED: dict[str, Any] = {
    "entities": {
        "account": {
            "key": "id",
            "columns": {"id": "uuid", "name": "text", "owner_id": "integer"},
            "writable": ["name", "owner_id"],
        }
    },
    "profiles": {
        "mine": {
            "offline": True,
            "entities": {
                "account": {"filter": {"column": "owner_id", "op": "between", "value": [1, 9]}}
            },
        }
    },
    "default_profile": "mine",
}


async def test_a_download_anew_removes_own_rows_the_new_filter_excludes(
    running: RunningDaemon, tmp_path: Path
) -> None:
    """The SDK keeps a row whose upload is unanswered through a Resync (nothing a user wrote
    is dropped) and may settle it afterwards; so when a model change makes the device
    download an entity anew, the server deletes the device's own rows the new filter
    excludes (the SDK keeps that delete over a late result: tests/client)."""
    org = org_name()
    await running.add_org(org, RANGED)
    phone = WireDevice(running, org, device_id="phone")
    await phone.sync()
    key = str(uuid.uuid4())
    await upload_as(running, org, tmp_path, "phone", key)  # owner 7: inside 1..9
    narrowed = {
        **RANGED,
        "profiles": {
            "mine": {
                "offline": True,
                "entities": {
                    "account": {"filter": {"column": "owner_id", "op": "between", "value": [1, 5]}}
                },
            }
        },
    }
    async with await AdminClient.open_unix(running.base / "admin.sock") as admin:
        await admin.call("model.put", {"org": org, "model": narrowed})
    session = await phone.sync()
    assert [r.entities for r in session.of(Resync)] == [("account",)]
    assert key in [d for c in session.of(Changes) for d in c.deletes]


async def test_a_download_anew_removes_own_rows_deleted_meanwhile_unfiltered_too(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    unfiltered = {**MODEL, "profiles": {"mine": {"offline": True, "entities": {"account": {}}}}}
    store = await running.add_org(org, unfiltered)
    phone = WireDevice(running, org, device_id="phone")
    await phone.sync()
    key = str(uuid.uuid4())
    await upload_as(running, org, tmp_path, "phone", key)
    await store.fetch("DELETE FROM account WHERE id = $1", uuid.UUID(key))
    renamed = {
        **unfiltered,
        "entities": {"account": {**MODEL["entities"]["account"], "writable": ["name"]}},
    }
    async with await AdminClient.open_unix(running.base / "admin.sock") as admin:
        await admin.call("model.put", {"org": org, "model": renamed})
    session = await phone.sync()
    assert [r.entities for r in session.of(Resync)] == [("account",)]
    assert key in [d for c in session.of(Changes) for d in c.deletes]
