"""The OData source through the ingest role's pipeline (``OrgSync``) on the real daemon and
staging: provisioning copies the service's rows, a change and a delete at the service reach
staging, an expired delta token loses no delete, a device edit is written back with its ETag
without a second version, and a change at the service since the device's version is a
write-back failure the operator sees with the service's reason."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from syncd.client import LocalDB
from syncd.ingest.odata.service import ODataService
from syncd.ingest.sync import OrgSync
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import Staging
from tests.ingest.odata.support import account

pytestmark = pytest.mark.timeout(90)


def _key(i: int) -> uuid.UUID:
    return uuid.UUID(account(i)["accountid"])


async def _accounts(staging: Staging, org: str) -> dict[uuid.UUID, tuple[str, int]]:
    rows = await staging.rows(org, "account", "accountid, name, _version")
    return {r["accountid"]: (r["name"], r["_version"]) for r in rows}


async def test_odata_changes_reach_staging_and_device_edits_reach_the_service(
    daemon: RunningDaemon,
    service: ODataService,
    org_sync: OrgSync,
    staging: Staging,
    tmp_path: Path,
) -> None:
    org = org_sync.org
    for i in range(5):
        service.insert("accounts", account(i))
    service.insert("notes", {"noteid": 1, "body": "hello"})
    await org_sync.provision()
    assert {k: n for k, (n, _) in (await _accounts(staging, org)).items()} == {
        _key(i): f"account {i}" for i in range(5)
    }
    assert [tuple(r) for r in await staging.rows(org, "note", "noteid, body")] == [(1, "hello")]

    # A change and a delete at the service arrive through the delta link.
    service.update("accounts", _key(1), {"name": "changed in the CRM"})
    service.delete("accounts", _key(2))
    assert await org_sync.stream_once() == 2
    accounts = await _accounts(staging, org)
    assert set(accounts) == {_key(i) for i in (0, 1, 3, 4)}
    assert accounts[_key(1)][0] == "changed in the CRM"

    # Delta tokens expire while a row is deleted: the full re-read deletes it in staging.
    service.delete("accounts", _key(3))
    service.expire_delta_tokens()
    await org_sync.stream_once()
    assert set(await _accounts(staging, org)) == {_key(i) for i in (0, 1, 4)}

    # A device edit is written back with If-Match, and its return through the delta makes
    # no second version.
    db = LocalDB.open(tmp_path / "device.sqlite")
    try:
        client = daemon.client(db, daemon.token(org), org)
        async with asyncio.timeout(30):
            await client.sync_once()
            db.update("account", str(_key(0)), {"name": "edited on the phone"})
            await client.sync_once()
        assert await org_sync.writeback_once() == (1, 0)
        assert service.row("accounts", _key(0))["name"] == "edited on the phone"  # type: ignore[index]
        assert any(
            r.startswith(f"PATCH /api/data/v9.2/accounts({_key(0)}) If-Match: W/")
            for r in service.requests
        )
        version = (await _accounts(staging, org))[_key(0)][1]
        await org_sync.stream_once()
        assert (await _accounts(staging, org))[_key(0)] == ("edited on the phone", version)

        # A CRM user changes the row before the ingest role has seen it, and the device
        # edits the same row: the write-back is refused as a conflict with the reason.
        service.update("accounts", _key(4), {"name": "the CRM's edit"})
        async with asyncio.timeout(30):
            db.update("account", str(_key(4)), {"name": "the phone's edit"})
            await client.sync_once()
        assert await org_sync.writeback_once() == (0, 1)
        assert service.row("accounts", _key(4))["name"] == "the CRM's edit"  # type: ignore[index]
    finally:
        db.close()
    async with staging.connect(org) as conn:
        failed = await conn.fetch(
            "SELECT key, status, last_error FROM _syncd_writeback WHERE status = 'failed'"
        )
    assert [(r["key"], r["status"]) for r in failed] == [(str(_key(4)), "failed")]
    assert "conflict: changed at the source since the device's version" in failed[0]["last_error"]
    assert "the CRM's edit" in failed[0]["last_error"]
