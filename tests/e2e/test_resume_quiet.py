"""A resuming device reads its window only when the window touched one of its partitions.

Devices of different teams (the ``claims`` profile: ``team_id in user.teams``, one split
piece per team) go offline with a checkpoint; a commit for one team lands. On reconnect the
device of that team gets the rows and the others never run their window's reads (their
pieces' values were written by no row: ``quiet_entities``), yet every device ends holding
exactly what its filter selects. A device whose own upload is in its gap, and one with a
time-relative filter (time alone moves its rows), read theirs as before. The daemon's
statements are observed by wrapping the org's staging ``fetch`` (it still runs them all).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from syncd.client import LocalDB
from syncd.store import Changeset
from tests.e2e.conftest import RunningDaemon, ingest, org_name
from tests.e2e.field_org import acc, keys
from tests.support.field_model import field_model
from tests.support.statements import record_statements

pytestmark = pytest.mark.timeout(90)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

MODEL: dict[str, Any] = field_model()
MODEL["entities"]["account"]["writable"] = ["name", "team_id"]
MODEL["profiles"]["claims"] = {
    "offline": True,
    "entities": {
        "account": {"filter": {"column": "team_id", "op": "in", "param": "user.teams"}},
    },
}
MODEL["profiles"]["recent"] = {
    "offline": True,
    "entities": {"account": {"filter": {"column": "modified_at", "op": "within", "last": "90d"}}},
}
MODEL["default_profile"] = "claims"

#: The window's upsert pass, which every read of an entity's window starts with.
ACCOUNT_WINDOW = 'FROM "account" t WHERE'


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def row(n: int, team: int, age_days: int = 10) -> dict[str, Any]:
    return {
        "id": uuid.UUID(acc(n)),
        "name": "a",
        "team_id": team,
        "modified_at": T0 - age_days * DAY,
    }


async def test_resuming_devices_read_only_windows_that_touched_their_partitions(
    running: RunningDaemon, tmp_path: Path
) -> None:
    org = org_name()
    store = await running.add_org(org, MODEL)
    registry = running.daemon.registry
    assert registry is not None
    await registry.control.assign_profile(org, "recent", "recent")
    await registry.reload(org)
    runtime = registry.get(org)
    assert runtime is not None
    clock = runtime.hub.clock = Clock(T0)
    await ingest(
        store,
        MODEL,
        Changeset(upserts={"account": [row(1, 1), row(2, 2), row(3, 3), row(4, 2, age_days=85)]}),
    )
    teams = {"one": "1", "two": "2", "three": "3"}
    tokens = {name: running.token(org, user=name, teams=[team]) for name, team in teams.items()}
    tokens["recent"] = running.token(org, user="recent")
    dbs = {name: LocalDB.open(tmp_path / f"{name}.sqlite") for name in tokens}

    async def sync(name: str) -> None:
        client = running.client(dbs[name], tokens[name], org, device_id=f"{name}-phone")
        async with asyncio.timeout(30):
            await client.sync_once()

    for name in dbs:
        await sync(name)
    assert keys(dbs["two"], "account") == {acc(2), acc(4)}
    assert keys(dbs["recent"], "account") == {acc(1), acc(2), acc(3), acc(4)}

    # Offline: a commit for team 1 only; device "three" uploads from another of its
    # databases (same device id), so its own write is in its gap; and a week passes, which
    # takes row 4 (85 days old) out of the "recent" device's window.
    await ingest(store, MODEL, Changeset(upserts={"account": [row(5, 1, age_days=1)]}))
    other = LocalDB.open(tmp_path / "three-other.sqlite")
    client = running.client(other, tokens["three"], org, device_id="three-phone")
    async with asyncio.timeout(30):
        await client.sync_once()
        other.insert("account", {"id": acc(6), "name": "mine", "team_id": 3})
        await client.sync_once()
    assert other.pending_count() == 0
    assert not other.errors()
    clock.now = T0 + 7 * DAY

    statements = record_statements(runtime.staging)
    read: dict[str, bool] = {}
    for name in dbs:  # one at a time: each one's statements are its own
        statements.clear()
        await sync(name)
        read[name] = any(ACCOUNT_WINDOW in s for s in statements)
    assert read == {"one": True, "two": False, "three": True, "recent": True}
    # Yet every device holds exactly what its filter selects now.
    assert keys(dbs["one"], "account") == {acc(1), acc(5)}
    assert keys(dbs["two"], "account") == {acc(2), acc(4)}
    assert keys(dbs["three"], "account") == {acc(3), acc(6)}
    assert keys(dbs["recent"], "account") == {acc(1), acc(2), acc(3), acc(5)}  # 6 has no date

    # No write at all, only time: rows 1-3 leave the "recent" window, whose device alone
    # reads (no partition of anyone was touched, but time moves its rows).
    clock.now = T0 + 85 * DAY
    for name in dbs:
        statements.clear()
        await sync(name)
        read[name] = any(ACCOUNT_WINDOW in s for s in statements)
    assert read == {"one": False, "two": False, "three": False, "recent": True}
    assert keys(dbs["recent"], "account") == {acc(5)}
    assert keys(dbs["two"], "account") == {acc(2), acc(4)}
