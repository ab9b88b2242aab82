"""Rows moving in and out of a ``within`` filter because time passed, with no write.

The feed is given explicit wall times for each window (what the sync token and the hub
carry), so these tests move time by choosing the next window's time: a row whose date left
the window arrives as a tombstone, a row whose date entered arrives whole, children follow a
parent that left by time, and a row that changed *and* crossed a bound is judged on its
state at each side's own time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from syncd.model import ClientModel
from syncd.store import ChangeStream, OrgStores, Snapshot, StagingStore, Subscription
from syncd.store.bound_filter import bind_filter
from syncd.store.feed import WindowTimes
from tests.conftest import unique_name
from tests.support.field_model import field_model

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

MODEL = field_model()
MODEL["profiles"]["recent"] = {
    "offline": True,
    "entities": {
        "account": {"filter": {"column": "modified_at", "op": "within", "last": "90d"}},
        "contact": {"filter": {"related": {"entity": "account", "via": "account_id"}}},
    },
}
MODEL["profiles"]["due"] = {
    "offline": True,
    "entities": {"account": {"filter": {"column": "due", "op": "within", "next": "7d"}}},
}
PARSED = ClientModel.parse(MODEL)


def acc(n: int) -> str:
    return str(uuid.UUID(int=n))


# account n: modified n days before T0 (n = 80, 85, 100), plus one with no date; due dates
# likewise in days after T0's date.
AGES = (80, 85, 100)


@pytest.fixture
async def store(org_stores: OrgStores) -> AsyncIterator[StagingStore]:
    org = unique_name("org")
    staging = await org_stores.provision(org, PARSED)
    for n in AGES:
        await staging.fetch(
            "INSERT INTO account (id, name, modified_at, due) VALUES ($1::uuid, 'a', $2, $3)",
            acc(n),
            T0 - n * DAY,
            (T0 + (n - 70) * DAY).date(),
        )
        await staging.fetch(
            "INSERT INTO contact (id, account_id, email) VALUES ($1, $2::uuid, 'c')", n, acc(n)
        )
    await staging.fetch("INSERT INTO account (id, name) VALUES ($1::uuid, 'undated')", acc(1))
    try:
        yield staging
    finally:
        await org_stores.deprovision(org)


class Device:
    """What a device holds, fed one window at a time at wall times the test chooses."""

    def __init__(self, store: StagingStore, profile: str, *entities: str) -> None:
        p = PARSED.profile(profile)
        params: dict[str, Any] = {"user.id": "7", "user.teams": [], "user.roles": []}
        self.store = store
        self.subs = [
            Subscription(PARSED.entity(e), bind_filter(PARSED, p, e, params, "7")) for e in entities
        ]
        self.checkpoint: Snapshot | None = None
        self.at: datetime | None = None
        self.rows: dict[tuple[str, Any], tuple[Any, ...]] = {}

    async def sync(self, at: datetime) -> list[tuple[str, str, Any]]:
        events: list[tuple[str, str, Any]] = []
        async with asyncio.timeout(30):
            window = await self.store.changes(self.checkpoint, (), batch_size=5)
            times = WindowTimes(self.at, at)
            subs = tuple(s.at(times) for s in self.subs)
            stream = ChangeStream(self.store, self.checkpoint, window.checkpoint, subs, 5)
            keys = {s.entity.name: s.entity.key_index for s in self.subs}
            async for batch in stream:
                for row in batch.upserts:
                    self.rows[(batch.entity, row[keys[batch.entity]])] = tuple(row)
                    events.append((batch.entity, "u", row[keys[batch.entity]]))
                for key in batch.deletes:
                    self.rows.pop((batch.entity, key), None)
                    events.append((batch.entity, "d", key))
        self.checkpoint, self.at = window.checkpoint, at
        return sorted(events)

    def held(self, entity: str) -> set[Any]:
        return {k for (e, k) in self.rows if e == entity}


async def test_a_date_leaving_the_window_is_a_tombstone(store: StagingStore) -> None:
    device = Device(store, "recent", "account")
    await device.sync(T0)
    assert device.held("account") == {acc(80), acc(85)}
    assert await device.sync(T0) == []  # no time passed, nothing moves
    # Seven days on, the 85-day-old row is 92 days old; the 80-day-old one stays.
    assert await device.sync(T0 + 7 * DAY) == [("account", "d", acc(85))]
    assert await device.sync(T0 + 30 * DAY) == [("account", "d", acc(80))]
    assert device.held("account") == set()


async def test_a_date_entering_the_window_arrives_whole(store: StagingStore) -> None:
    device = Device(store, "due", "account")
    await device.sync(T0)
    assert device.held("account") == set()  # due in 10, 15, 30 days: none within 7
    assert await device.sync(T0 + 3 * DAY) == [("account", "u", acc(80))]
    events = await device.sync(T0 + 25 * DAY)
    assert events == [("account", "u", acc(85)), ("account", "u", acc(100))]
    rows = await store.fetch("SELECT _version FROM account WHERE id = $1::uuid", acc(100))
    assert device.rows[("account", acc(100))][-1] == rows[0][0]


async def test_children_follow_a_parent_that_left_by_time(store: StagingStore) -> None:
    device = Device(store, "recent", "account", "contact")
    await device.sync(T0)
    assert device.held("contact") == {80, 85}
    events = await device.sync(T0 + 7 * DAY)
    assert events == [("account", "d", acc(85)), ("contact", "d", 85)]


async def test_a_written_row_is_judged_at_each_side_s_own_time(store: StagingStore) -> None:
    device = Device(store, "recent", "account")
    await device.sync(T0)
    # Renamed (a write) while its date leaves the window: it matched at C's time, not at S's.
    await store.fetch("UPDATE account SET name = 'x' WHERE id = $1::uuid", acc(85))
    # Re-dated into the window: it did not match at C and arrives whole.
    await store.fetch(
        "UPDATE account SET modified_at = $2 WHERE id = $1::uuid", acc(100), T0 + 6 * DAY
    )
    events = await device.sync(T0 + 7 * DAY)
    assert events == [("account", "d", acc(85)), ("account", "u", acc(100))]
    assert device.held("account") == {acc(80), acc(100)}
