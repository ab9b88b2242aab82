"""A full re-read after an expired delta token (a truncate, then every current row, in one
staging transaction) sends devices only what changed: rows the source left alone keep
their version, a changed row gets a new one, a row deleted meanwhile is gone, and the
change log, which is what devices are sent from, holds exactly those two."""

from __future__ import annotations

import uuid

import pytest

from syncd.ingest.odata.service import ODataService
from syncd.ingest.sync import OrgSync
from tests.ingest.conftest import Staging
from tests.ingest.odata.support import account

pytestmark = pytest.mark.timeout(90)


def _key(i: int) -> uuid.UUID:
    return uuid.UUID(account(i)["accountid"])


async def _versions(staging: Staging, org: str, table: str) -> dict[object, int]:
    rows = await staging.rows(org, table, f"{table}id AS k, _version")
    return {r["k"]: r["_version"] for r in rows}


async def test_an_expired_token_reread_versions_only_what_changed(
    service: ODataService, org_sync: OrgSync, staging: Staging
) -> None:
    org = org_sync.org
    for i in range(6):
        service.insert("accounts", account(i))
    service.insert("notes", {"noteid": 1, "body": "left alone"})
    await org_sync.provision()
    before = await _versions(staging, org, "account")
    notes_before = await _versions(staging, org, "note")
    assert set(before) == {_key(i) for i in range(6)}
    async with staging.connect(org) as conn:
        logged_upto = await conn.fetchval("SELECT max(seq) FROM _syncd_changes")

    service.update("accounts", _key(1), {"name": "changed while away"})
    service.delete("accounts", _key(4))
    service.expire_delta_tokens()
    await org_sync.stream_once()

    after = await _versions(staging, org, "account")
    assert set(after) == {_key(i) for i in (0, 1, 2, 3, 5)}
    assert after[_key(1)] > before[_key(1)]
    assert {k: v for k, v in after.items() if k != _key(1)} == {
        k: v for k, v in before.items() if k not in (_key(1), _key(4))
    }
    assert await _versions(staging, org, "note") == notes_before  # re-read too: unchanged
    [name] = [
        r["name"] for r in await staging.rows(org, "account", "accountid, name") if r[0] == _key(1)
    ]
    assert name == "changed while away"
    async with staging.connect(org) as conn:
        logged = await conn.fetch(
            "SELECT entity, key, op FROM _syncd_changes WHERE seq > $1 ORDER BY seq",
            logged_upto,
        )
    assert sorted((r["entity"], r["key"], r["op"]) for r in logged) == sorted(
        [("account", str(_key(1)), b"u"), ("account", str(_key(4)), b"d")]
    )
