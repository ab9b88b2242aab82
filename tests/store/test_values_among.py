"""Which live values a window wrote, asked two ways: all values in one statement, or the
window's own values first when there are many live ones (``feed.values_among``).

The hub asks this once per split column per window with one value per live device, while a
window usually writes a few: above FEW_VALUES the window's values are read first (at most
WRITTEN_VALUES_LIMIT) and looked up; a window that wrote more falls back to the array. Each
case is checked on the real staging schema, with integer and uuid columns (the values come
back as the column's Python type and must compare equal to the coerced filter values).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from syncd.model import ClientModel
from syncd.store import OrgStores, StagingStore
from syncd.store.feed import FEW_VALUES, WRITTEN_VALUES_LIMIT
from tests.conftest import provisioned
from tests.support.field_model import field_model

PARSED = ClientModel.parse(field_model())
ACCOUNT = PARSED.entity("account")
CONTACT = PARSED.entity("contact")


@pytest.fixture
async def store(org_stores: OrgStores) -> AsyncIterator[StagingStore]:
    async with provisioned(org_stores, PARSED) as staging:
        yield staging


async def add_accounts(store: StagingStore, teams: range) -> None:
    await store.fetch(
        "INSERT INTO account (id, name, owner_id, team_id, amount)"
        " SELECT gen_random_uuid(), 'a', 1, t, 50 FROM unnest($1::int[]) AS t",
        list(teams),
    )


async def test_few_many_and_a_window_that_wrote_more_than_the_limit(store: StagingStore) -> None:
    team = ACCOUNT.column("team_id")
    many = dict.fromkeys(range(1, 2 * WRITTEN_VALUES_LIMIT)).keys()
    assert len(many) > FEW_VALUES
    start = await store.current_checkpoint()
    await add_accounts(store, range(1, WRITTEN_VALUES_LIMIT + 50))  # more than the limit
    wrote_many = set(range(1, WRITTEN_VALUES_LIMIT + 50))
    assert await store.touched_values(ACCOUNT, team, many, start) == wrote_many
    few = dict.fromkeys([5, 7, 10**6]).keys()
    assert await store.touched_values(ACCOUNT, team, few, start) == {5, 7}

    after = await store.current_checkpoint()
    await store.fetch("UPDATE account SET team_id = 9999 WHERE team_id = 5")
    # The before-image's value (5) and the row's new one (9999, live only in the second).
    assert await store.touched_values(ACCOUNT, team, many, after) == {5}
    with_new = dict.fromkeys([*many, 9999]).keys()
    assert await store.touched_values(ACCOUNT, team, with_new, after) == {5, 9999}
    assert await store.touched_values(ACCOUNT, team, few, after) == {5}
    assert await store.touched_values(ACCOUNT, team, dict.fromkeys([6, 8]).keys(), after) == set()
    quiet = await store.current_checkpoint()
    assert await store.touched_values(ACCOUNT, team, many, quiet) == set()


async def test_uuid_values_compare_as_the_filter_coerced_them(store: StagingStore) -> None:
    parents = [uuid.UUID(int=n) for n in range(1, 60)]
    live = dict.fromkeys(parents).keys()
    assert len(live) > FEW_VALUES
    start = await store.current_checkpoint()
    await store.fetch(
        "INSERT INTO contact (id, account_id, email) VALUES (1, $1, 'c'), (2, $2, 'c')",
        parents[3],
        uuid.UUID(int=10**9),  # not a live value
    )
    column = CONTACT.column("account_id")
    assert await store.touched_values(CONTACT, column, live, start) == {parents[3]}
