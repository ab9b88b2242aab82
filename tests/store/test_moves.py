"""Rows moving in and out of a filter through the incremental feed (decision 3).

Each test holds a Replica (what a device holds, fed window by window) and checks, after
writes in staging, the events the window carried: a row that left the filter arrives as a
tombstone, a row that entered arrives whole, and a key that matched in neither state never
arrives at all. Writes go through plain SQL on their own connections, as the ingest role's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from syncd.model import ClientModel
from syncd.store import OrgStores, StagingStore, Subscription
from syncd.store.bound_filter import bind_filter
from tests.conftest import unique_name
from tests.store.feed_helpers import Replica
from tests.support.field_model import field_model

MODEL = field_model()
MODEL["profiles"]["custom"] = {
    "offline": True,
    "entities": {"account": {"filter": {"column": "amount", "op": "between", "value": [10, 100]}}},
}
PARSED = ClientModel.parse(MODEL)


def acc(n: int) -> str:
    return str(uuid.UUID(int=n))


@pytest.fixture
async def store(org_stores: OrgStores) -> AsyncIterator[StagingStore]:
    org = unique_name("org")
    staging = await org_stores.provision(org, PARSED)
    await staging.fetch(
        """
        INSERT INTO team_member (id, user_id, team_id) VALUES (1, '7', 1), (2, '8', 2);
        """
    )
    await staging.fetch(
        """
        INSERT INTO account (id, name, owner_id, team_id, amount)
        SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(n), 12, '0'))::uuid, 'a' || n,
               6 + n % 3, 1 + n % 2, 50
        FROM generate_series(1, 6) n
        """
    )
    # contact n -> account n, task 100+n -> contact n
    await staging.fetch(
        "INSERT INTO contact (id, account_id, email)"
        " SELECT n, ('00000000-0000-0000-0000-' || lpad(to_hex(n), 12, '0'))::uuid, 'c' || n"
        " FROM generate_series(1, 6) n"
    )
    await staging.fetch(
        "INSERT INTO task (id, contact_id) SELECT 100 + n, n FROM generate_series(1, 6) n"
    )
    try:
        yield staging
    finally:
        await org_stores.deprovision(org)


def subs(profile: str, user: str, *entities: str) -> list[Subscription]:
    p = PARSED.profile(profile)
    params: dict[str, Any] = {"user.id": user, "user.teams": [], "user.roles": []}
    return [
        Subscription(PARSED.entity(e), bind_filter(PARSED, p, e, params, user)) for e in entities
    ]


def held(replica: Replica, entity: str) -> set[Any]:
    return {k for (e, k) in replica.rows if e == entity}


async def test_owner_change_moves_the_row_out_and_back_in(store: StagingStore) -> None:
    device = Replica(store, subs("owners", "7", "account"))
    await device.sync()
    assert held(device, "account") == {acc(1), acc(4)}  # owner 6 + n % 3 == 7
    await store.fetch("UPDATE account SET owner_id = 9 WHERE id = $1::uuid", acc(1))
    assert await device.sync() == [("account", "d", acc(1))]
    await store.fetch("UPDATE account SET owner_id = 7 WHERE id = $1::uuid", acc(1))
    assert await device.sync() == [("account", "u", acc(1))]
    assert held(device, "account") == {acc(1), acc(4)}


async def test_value_leaving_a_range_is_a_tombstone(store: StagingStore) -> None:
    device = Replica(store, subs("custom", "7", "account"))
    await device.sync()
    await store.fetch("UPDATE account SET amount = 500 WHERE id = $1::uuid", acc(2))
    await store.fetch("UPDATE account SET name = 'renamed' WHERE id = $1::uuid", acc(3))
    events = await device.sync()
    assert sorted(events) == [("account", "d", acc(2)), ("account", "u", acc(3))]


async def test_key_outside_the_filter_in_both_states_is_never_sent(store: StagingStore) -> None:
    device = Replica(store, subs("owners", "7", "account"))
    await device.sync()
    # Owner 8 -> 9: never user 7's, before or after; deleting owner 9's row likewise.
    await store.fetch("UPDATE account SET owner_id = 9 WHERE id = $1::uuid", acc(2))
    await store.fetch("DELETE FROM account WHERE id = $1::uuid", acc(3))
    assert await device.sync() == []


async def test_in_and_out_within_one_window_sends_nothing(store: StagingStore) -> None:
    device = Replica(store, subs("owners", "7", "account"))
    await device.sync()
    await store.fetch("UPDATE account SET owner_id = 7 WHERE id = $1::uuid", acc(2))
    await store.fetch("UPDATE account SET owner_id = 8 WHERE id = $1::uuid", acc(2))
    await store.fetch("UPDATE account SET owner_id = 9 WHERE id = $1::uuid", acc(1))
    await store.fetch("UPDATE account SET owner_id = 7 WHERE id = $1::uuid", acc(1))
    # acc(1) left and came back: it is re-sent whole (it changed), never as a tombstone.
    assert await device.sync() == [("account", "u", acc(1))]


async def test_leaving_a_staging_team_removes_the_whole_chain(store: StagingStore) -> None:
    device = Replica(store, subs("sales", "7", "account", "contact", "task"))
    await device.sync()
    assert held(device, "account") == {acc(2), acc(4), acc(6)}  # team 1 + n % 2 == 1
    assert held(device, "task") == {102, 104, 106}
    await store.fetch("DELETE FROM team_member WHERE id = 1")
    events = await device.sync()
    assert sorted(events) == sorted(
        [("account", "d", acc(n)) for n in (2, 4, 6)]
        + [("contact", "d", n) for n in (2, 4, 6)]
        + [("task", "d", 100 + n) for n in (2, 4, 6)]
    )
    assert device.rows == {}


async def test_joining_a_staging_team_brings_the_rows_whole(store: StagingStore) -> None:
    device = Replica(store, subs("sales", "8", "account", "contact", "task"))
    await device.sync()
    assert held(device, "account") == {acc(1), acc(3), acc(5)}
    await store.fetch("INSERT INTO team_member (id, user_id, team_id) VALUES (3, '8', 1)")
    events = await device.sync()
    assert {e for e in events if e[1] == "d"} == set()
    assert held(device, "account") == {acc(n) for n in range(1, 7)}
    assert held(device, "task") == {100 + n for n in range(1, 7)}
    # The values are the staging row's, version included.
    rows = await store.fetch("SELECT id::text, _version FROM account WHERE id = $1::uuid", acc(2))
    assert device.rows[("account", acc(2))][-1] == rows[0][1]


async def test_related_parent_leaving_takes_its_children(store: StagingStore) -> None:
    device = Replica(store, subs("sales", "7", "account", "contact", "task"))
    await device.sync()
    await store.fetch("UPDATE account SET team_id = 2 WHERE id = $1::uuid", acc(4))
    events = await device.sync()
    assert sorted(events) == [("account", "d", acc(4)), ("contact", "d", 4), ("task", "d", 104)]
    await store.fetch("UPDATE contact SET account_id = $1::uuid WHERE id = 1", acc(2))
    events = await device.sync()
    # contact 1 moved under a visible account: it arrives, and so does its task.
    assert sorted(events) == [("contact", "u", 1), ("task", "u", 101)]


async def test_membership_change_after_the_snapshot_belongs_to_the_next_window(
    store: StagingStore,
) -> None:
    device = Replica(store, subs("sales", "7", "account"))
    await device.sync()
    await store.fetch("UPDATE account SET name = 'x' WHERE id = $1::uuid", acc(2))
    stream = await store.changes(device.checkpoint, device.subs, batch_size=7)
    # Commits after the window's snapshot S, before its pages are read.
    await store.fetch("DELETE FROM team_member WHERE id = 1")
    got = [(b.entity, [r[0] for r in b.upserts], list(b.deletes)) async for b in stream]
    assert got == [("account", [acc(2)], [])]  # as of S the user is still in team 1
    device.checkpoint = stream.checkpoint
    events = await device.sync()
    assert sorted(events) == [("account", "d", acc(n)) for n in (2, 4, 6)]


async def test_moves_have_indexes_for_children_and_members(store: StagingStore) -> None:
    rows = await store.fetch(
        "SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN ('contact', 'team_member')"
    )
    defs = {(r[0], r[1].split(" USING btree ")[1]) for r in rows}
    assert ("contact", "(account_id, id)") in defs  # related children by parent key
    assert ("team_member", "(user_id, id)") in defs  # members by user
