"""Initial scans read one page ahead: what a caller can observe of it.

The next page's statement runs while the caller holds a page; never more than two statements
of one scan run at once; a caller that stops early (a device that left) leaves no statement
running, no connection borrowed and no unread task exception; and reading planned ranges
ahead changes nothing about which rows arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import ChangeBatch, RowFilter, Snapshot, StagingStore, Subscription, bulk_load
from syncd.store.initial import initial_pages
from tests.store.feed_helpers import BOUND_S


class CountingFetch:
    """The store's own fetch, counting the statements running at once; statements after the
    first ``answered`` wait for ``slow`` first (a PostgreSQL that is busy elsewhere)."""

    def __init__(self, store: StagingStore, answered: int | None = None) -> None:
        self.store = store
        self.running = 0
        self.most = 0
        self.started = 0
        self.answered = answered
        self.slow = asyncio.Event()

    async def __call__(self, sql: str, *args: object) -> list[asyncpg.Record]:
        self.running += 1
        self.started += 1
        self.most = max(self.most, self.running)
        try:
            if self.answered is not None and self.started > self.answered:
                await self.slow.wait()
            return await self.store.fetch(sql, *args)
        finally:
            self.running -= 1


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the loop would log as unhandled ("Task exception was never retrieved", ...)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


async def load(staging: StagingStore, crm_model: ClientModel, n: int, owners: int = 4) -> None:
    rows = [(uuid.uuid4(), f"a{i}", i % owners, None, None, 0) for i in range(n)]
    pool = await staging.pool()
    async with pool.acquire() as conn:
        await bulk_load(conn, crm_model.entity("account"), rows)
    await staging.fetch("ANALYZE account")


def owners(*ids: int) -> RowFilter:
    return RowFilter.from_spec({"column": "owner_id", "op": "IN", "param": "o"}, {"o": list(ids)})


async def truth(staging: StagingStore, *ids: int) -> list[str]:
    rows = await staging.fetch(
        "SELECT id::text FROM account WHERE owner_id = ANY($1::bigint[]) ORDER BY id", list(ids)
    )
    return [r[0] for r in rows]


@pytest.mark.parametrize("filtered", [False, True])
async def test_next_page_is_read_while_the_caller_holds_one(
    staging: StagingStore, crm_model: ClientModel, filtered: bool
) -> None:
    await load(staging, crm_model, 300)
    sub = Subscription(crm_model.entity("account"), owners(0, 1, 2, 3) if filtered else None)
    fetch = CountingFetch(staging)
    snapshot = await staging.current_checkpoint()
    planning = 2 if filtered else 0  # the one-page probe, then the plan
    got: list[str] = []
    pages = 0
    async with asyncio.timeout(BOUND_S):
        # Unfiltered pages of 20 rows too (they hold KEY_PAGE_ROWS otherwise: one page here).
        async for batch in initial_pages(fetch, sub, snapshot, 20, key_page_rows=20):
            pages += 1
            if len(batch.upserts) == 20:
                # The caller has not asked for the next page, yet its statement has started.
                assert fetch.started >= planning + pages + 1
            got.extend(r[0] for r in batch.upserts)
    assert got == await truth(staging, 0, 1, 2, 3)
    assert fetch.most <= 2


@pytest.mark.parametrize("filtered", [False, True])
async def test_caller_that_stops_early_leaves_nothing_running(
    staging: StagingStore,
    crm_model: ClientModel,
    filtered: bool,
    loop_errors: list[dict[str, Any]],
) -> None:
    await load(staging, crm_model, 300)
    sub = Subscription(crm_model.entity("account"), owners(1, 2) if filtered else None)
    # Filtered: the one-page probe, the plan and the first range answer; the rest wait.
    fetch = CountingFetch(staging, answered=3 if filtered else 1)
    snapshot = await staging.current_checkpoint()
    async with asyncio.timeout(BOUND_S):
        # Unfiltered: pages of 40 rows, so the caller leaves holding the first of a page's
        # batches while the next page is read.
        pages = initial_pages(fetch, sub, snapshot, 10, key_page_rows=40)
        async with contextlib.aclosing(pages):
            async for _batch in pages:
                assert fetch.running >= 1  # something is read ahead at the moment we leave
                break
        assert fetch.running == 0
    assert staging.pool_usage()[0] == 0
    assert loop_errors == []
    # The pool is fit for the next device: a full scan on it still returns every row.
    assert [r[0] for b in await collect(staging, sub, snapshot) for r in b.upserts] == (
        await truth(staging, 1, 2) if filtered else await truth(staging, 0, 1, 2, 3)
    )


async def collect(
    staging: StagingStore, sub: Subscription, snapshot: Snapshot
) -> list[ChangeBatch]:
    async with asyncio.timeout(BOUND_S):
        return [b async for b in initial_pages(staging.fetch, sub, snapshot, 10)]


async def test_cancelled_session_stops_the_statements_read_ahead(
    staging: StagingStore, crm_model: ClientModel, loop_errors: list[dict[str, Any]]
) -> None:
    """A session cancelled mid-scan while it waits on its device, its next page still being
    read: closing the scan ends that statement, and every connection is back in the pool."""
    await load(staging, crm_model, 400)
    sub = Subscription(crm_model.entity("account"), owners(0, 3))
    fetch = CountingFetch(staging, answered=3)  # the one-page probe, the plan, a first page
    snapshot = await staging.current_checkpoint()
    holding = asyncio.Event()

    async def session() -> None:
        async with contextlib.aclosing(initial_pages(fetch, sub, snapshot, 10)) as pages:
            async for _batch in pages:
                holding.set()
                await asyncio.Event().wait()  # the device never drains

    async with asyncio.timeout(BOUND_S):
        task = asyncio.ensure_future(session())
        await holding.wait()
        assert fetch.running >= 1  # the next page is being read
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert fetch.running == 0
    assert staging.pool_usage()[0] == 0
    assert loop_errors == []


async def test_filtered_scan_planned_after_its_snapshot_skips_and_repeats_nothing(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """The plan is read after the snapshot and counts rows written since (it does not check
    visibility): its ranges then hold fewer visible rows, but together still every visible
    matching row exactly once, in key order, none past the batch size."""
    await load(staging, crm_model, 400)
    sub = Subscription(crm_model.entity("account"), owners(0, 3))
    want = await truth(staging, 0, 3)
    snapshot = await staging.current_checkpoint()
    pool = await staging.pool()
    await pool.execute(
        "INSERT INTO account (id, owner_id)"
        " SELECT gen_random_uuid(), 0 FROM generate_series(1, 300)"
    )
    batches = await collect(staging, sub, snapshot)
    got = [r[0] for b in batches for r in b.upserts]
    assert got == want
    assert [b.last_key for b in batches] == [b.upserts[-1][0] for b in batches]
    assert max(len(b.upserts) for b in batches) <= 10


async def test_change_stream_closed_early_returns_its_connections(
    staging: StagingStore, crm_model: ClientModel, loop_errors: list[dict[str, Any]]
) -> None:
    """What a session does when its device leaves mid-download: it stops iterating and
    closes the stream; the page read ahead for it must not keep a connection."""
    await load(staging, crm_model, 300)
    subs = [Subscription(crm_model.entity("account")), Subscription(crm_model.entity("note"))]
    stream = await staging.changes(None, subs, batch_size=10)
    async with asyncio.timeout(BOUND_S):
        batches = aiter(stream)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                assert batch.entity == "account"
                break
    assert staging.pool_usage()[0] == 0
    assert loop_errors == []


@pytest.mark.parametrize("batch_size", [9, 10, 11])
async def test_small_filtered_result_arrives_whole_in_one_round_trip(
    staging: StagingStore, crm_model: ClientModel, batch_size: int
) -> None:
    """Owner 0 has exactly 10 rows: with pages of 10 or more they come in one batch from one
    statement; with 9 the plan's ranges take over; either way every row arrives once, in key
    order."""
    await load(staging, crm_model, 40)
    sub = Subscription(crm_model.entity("account"), owners(0))
    fetch = CountingFetch(staging)
    snapshot = await staging.current_checkpoint()
    async with asyncio.timeout(BOUND_S):
        batches = [b async for b in initial_pages(fetch, sub, snapshot, batch_size)]
    assert [r[0] for b in batches for r in b.upserts] == await truth(staging, 0)
    if batch_size >= 10:
        assert len(batches) == 1
        assert fetch.started == 1
    else:
        assert [len(b.upserts) for b in batches] == [9, 1]
