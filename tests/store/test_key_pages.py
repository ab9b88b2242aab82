"""Unfiltered initial downloads in key order read pages of many batches (issue 16): what a
device can observe of it is unchanged.

A page holds ``key_page_rows`` rows and goes to the caller ``batch_size`` rows at a time, so
a download takes a fraction of the statements it took with a page per batch. Every row of
the snapshot still arrives once, in key order, in batches no bigger than ``batch_size``;
every batch's ``last_key`` resumes the download exactly after it, also in the middle of a
page; the next page is read while the caller holds the batches of this one, and never more
than two statements run at once. Small sizes here do what a million rows do with pages of
``KEY_PAGE_ROWS``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import ChangeBatch, Snapshot, StagingStore, Subscription
from syncd.store.initial import KEY_PAGE_ROWS, initial_pages
from tests.store.feed_helpers import BOUND_S, collect, ids, load_accounts

PAGE = 40
BATCH = 15  # not a divisor of PAGE: a page ends with a short batch


class CountingFetch:
    """The store's own fetch, counting statements started and running at once."""

    def __init__(self, store: StagingStore) -> None:
        self.store = store
        self.started = 0
        self.running = 0
        self.most = 0

    async def __call__(self, sql: str, *args: object) -> list[asyncpg.Record]:
        self.started += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            return await self.store.fetch(sql, *args)
        finally:
            self.running -= 1


async def download(
    fetch: Any,
    sub: Subscription,
    snapshot: Snapshot,
    after: Any = None,
    *,
    stop_after: int | None = None,
) -> list[ChangeBatch]:
    scan = initial_pages(fetch, sub, snapshot, BATCH, after=after, key_page_rows=PAGE)
    return await collect(scan, stop_after)


async def all_ids(staging: StagingStore) -> list[str]:
    return [r[0] for r in await staging.fetch("SELECT id::text FROM account ORDER BY id")]


async def test_pages_of_many_batches_send_every_row_once_in_key_order(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    await load_accounts(staging, crm_model, 400)
    sub = Subscription(crm_model.entity("account"))
    fetch = CountingFetch(staging)
    batches = await download(fetch, sub, await staging.current_checkpoint())
    assert ids(batches) == await all_ids(staging)  # once each, in key order
    assert all(0 < len(b.upserts) <= BATCH for b in batches)
    assert [b.last_key for b in batches] == [b.upserts[-1][0] for b in batches]
    # 10 full pages and the empty one that ends the scan, for 30 batches (3 per page).
    assert fetch.started == 400 // PAGE + 1
    assert len(batches) == 30
    assert fetch.most <= 2


async def test_every_batch_position_resumes_exactly_after_it(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """A device cut off after any batch, at a page's end or inside it, resumes with the
    rows after that batch's last key and no other."""
    await load_accounts(staging, crm_model, 130)
    sub = Subscription(crm_model.entity("account"))
    snapshot = await staging.current_checkpoint()
    whole = await download(staging.fetch, sub, snapshot)
    everything = ids(whole)
    sent = 0
    for batch in whole:
        sent += len(batch.upserts)
        rest = await download(staging.fetch, sub, snapshot, after=batch.last_key)
        assert ids(rest) == everything[sent:]


async def test_next_page_is_read_while_the_caller_holds_this_pages_batches(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    await load_accounts(staging, crm_model, 200)
    sub = Subscription(crm_model.entity("account"))
    fetch = CountingFetch(staging)
    snapshot = await staging.current_checkpoint()
    seen = 0
    scan = initial_pages(fetch, sub, snapshot, BATCH, key_page_rows=PAGE)
    async with asyncio.timeout(BOUND_S), contextlib.aclosing(scan) as batches:
        async for batch in batches:
            seen += len(batch.upserts)
            pages_reached = -(-seen // PAGE)  # the page this batch came from, from 1
            # Its statement and the next page's have started, before the caller asks.
            assert fetch.started >= min(pages_reached + 1, 200 // PAGE + 1)
    assert fetch.most <= 2


async def test_rows_written_after_the_snapshot_are_not_sent(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """Writes between pages (and inside the page being handed out) belong to the window
    after the snapshot: the download holds exactly the snapshot's rows, each once."""
    await load_accounts(staging, crm_model, 200)
    sub = Subscription(crm_model.entity("account"))
    snapshot = await staging.current_checkpoint()
    want = await all_ids(staging)
    pool = await staging.pool()
    got: list[str] = []
    scan = initial_pages(staging.fetch, sub, snapshot, BATCH, key_page_rows=PAGE)
    async with asyncio.timeout(BOUND_S), contextlib.aclosing(scan) as batches:
        async for batch in batches:
            got.extend(row[0] for row in batch.upserts)
            if len(got) == BATCH:  # inside the first page: write across the whole key range
                await pool.execute("UPDATE account SET name = 'later' WHERE owner_id = 1")
                await pool.execute(
                    "INSERT INTO account (id, owner_id)"
                    " SELECT gen_random_uuid(), 9 FROM generate_series(1, 50)"
                )
    updated = await owner_ids(staging, 1)
    assert got == sorted(set(got))  # each once, in key order
    assert set(got) <= set(want)  # nothing inserted after the snapshot
    # Every row not written since is sent; a row updated since is sent only by a page read
    # before the update (the first two: the one handed out and the one read ahead), never
    # by a later one. The window after the snapshot sends its new version.
    assert set(want) - updated <= set(got)
    later_pages = set(want[2 * PAGE :])
    assert not (later_pages & updated & set(got))
    assert later_pages & updated  # the case happened


async def owner_ids(staging: StagingStore, owner: int) -> set[str]:
    rows = await staging.fetch("SELECT id::text FROM account WHERE owner_id = $1", owner)
    return {r[0] for r in rows}


@pytest.mark.parametrize("batch_size", [KEY_PAGE_ROWS, KEY_PAGE_ROWS * 2])
async def test_batches_bigger_than_a_page_are_read_a_batch_per_statement(
    staging: StagingStore, crm_model: ClientModel, batch_size: int
) -> None:
    """A ``sync.batch_size`` at or above KEY_PAGE_ROWS keeps one page per batch."""
    await load_accounts(staging, crm_model, 50)
    sub = Subscription(crm_model.entity("account"))
    fetch = CountingFetch(staging)
    snapshot = await staging.current_checkpoint()
    async with asyncio.timeout(BOUND_S):
        batches = [b async for b in initial_pages(fetch, sub, snapshot, batch_size)]
    assert [len(b.upserts) for b in batches] == [50]
    assert fetch.started == 1
