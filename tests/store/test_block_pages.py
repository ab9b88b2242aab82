"""Initial downloads in heap block ranges (issue 16): exactly the snapshot's rows, resumable
from every batch's position, a rewritten table refused rather than half-read, and writes
during the download converging through the window that follows.

Small pages (``page_rows``) force what a million-row table does with ranges of 10,000: many
ranges, ranges that hold more than a page and go on in key order, positions inside a range.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import pytest

from syncd.model import ClientModel
from syncd.store import ChangeBatch, Snapshot, StagingStore, Subscription
from syncd.store.initial import BlockPosition, TableRewritten, initial_pages
from tests.store.feed_helpers import BOUND_S, collect, ids, load_accounts

PAGE = 40
BATCH = 15


async def pages(
    staging: StagingStore,
    sub: Subscription,
    snapshot: Snapshot,
    after: Any = None,
    stop_after: int | None = None,
) -> list[ChangeBatch]:
    scan = initial_pages(
        staging.fetch, sub, snapshot, BATCH, after=after, storage_order=True, page_rows=PAGE
    )
    return await collect(scan, stop_after)


async def truth(staging: StagingStore) -> dict[str, int]:
    rows = await staging.fetch("SELECT id::text, _version FROM account")
    return {r[0]: r[1] for r in rows}


async def test_block_ranges_send_every_row_once_in_key_order_within_each_batch(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    await load_accounts(staging, crm_model, 3_000)
    blocks = (await staging.fetch("SELECT pg_relation_size('account') / 8192"))[0][0]
    assert blocks > 10  # several ranges, each of a few blocks
    sub = Subscription(crm_model.entity("account"))
    batches = await pages(staging, sub, await staging.current_checkpoint())
    got = ids(batches)
    assert Counter(got) == Counter(list(await truth(staging)))
    assert all(0 < len(b.upserts) <= BATCH for b in batches)
    assert all(ids([b]) == sorted(ids([b])) for b in batches)
    assert got != sorted(got)  # heap order across ranges: key order is promised per page only
    positions = [b.last_key for b in batches]
    assert all(isinstance(p, BlockPosition) for p in positions)
    assert positions[-1].after is None
    assert positions[-1].block == blocks
    # Inside a range a position names the range and the last key sent; a range that held
    # more than a page went on in key order after it.
    inside = [p for p in positions if p.after is not None]
    assert inside
    assert all(p.block < p.end for p in inside)


async def test_a_scan_resumed_from_any_position_sends_exactly_the_rest(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    await load_accounts(staging, crm_model, 1_500)
    sub = Subscription(crm_model.entity("account"))
    at = await staging.current_checkpoint()
    batches = await pages(staging, sub, at)
    every = Counter(ids(batches))
    for i, batch in enumerate(batches):
        rest = await pages(staging, sub, at, after=batch.last_key)
        assert Counter(ids(batches[: i + 1]) + ids(rest)) == every, i


async def test_a_table_rewritten_between_pages_stops_the_scan(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """VACUUM FULL between two pages (and CLUSTER before a resume) moves rows between blocks:
    the scan raises TableRewritten instead of sending a row twice or never."""
    await load_accounts(staging, crm_model, 3_000)
    pool = await staging.pool()
    # Dead rows at the front: the rewrite packs the live ones into other blocks.
    await pool.execute("DELETE FROM account WHERE owner_id = 0")
    sub = Subscription(crm_model.entity("account"))
    at = await staging.current_checkpoint()
    got: list[ChangeBatch] = []

    async def rewritten_after_two_pages() -> None:
        scan = initial_pages(staging.fetch, sub, at, BATCH, storage_order=True, page_rows=PAGE)
        async with asyncio.timeout(BOUND_S), contextlib.aclosing(scan) as batches:
            async for batch in batches:
                got.append(batch)
                if len(got) == 2:
                    await pool.execute("VACUUM FULL account")

    with pytest.raises(TableRewritten) as raised:
        await rewritten_after_two_pages()
    assert raised.value.entity == "account"
    assert len(got) < len(await truth(staging)) / BATCH  # it stopped well before the end
    assert len(ids(got)) == len(set(ids(got)))
    # A position taken before a rewrite is refused at once, whatever the rows now.
    await pool.execute("CLUSTER account USING account_pkey")
    with pytest.raises(TableRewritten):
        await pages(staging, sub, at, after=got[0].last_key)
    # The download from scratch at the same snapshot has every row.
    assert Counter(ids(await pages(staging, sub, at))) == Counter(list(await truth(staging)))


async def test_updates_during_a_block_download_converge_through_the_next_window(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """Rows updated (moved to other blocks: every update writes a new tuple, since ``_txid``
    is indexed), deleted and inserted after the snapshot, some before their range is read
    and some after: the download sends each row of the snapshot at most once, no row it
    should not, and the window after the snapshot brings the device to exactly staging."""
    await load_accounts(staging, crm_model, 3_000)
    pool = await staging.pool()
    sub = Subscription(crm_model.entity("account"))
    stream = await staging.changes(None, [sub], batch_size=BATCH)
    at = stream.checkpoint
    before = await truth(staging)
    cut = await pages(staging, sub, at, stop_after=20)
    # Rows already sent and rows not yet read alike: half of them updated, some deleted.
    await pool.execute("UPDATE account SET status = 7 WHERE owner_id IN (1, 2)")
    await pool.execute("DELETE FROM account WHERE owner_id = 3 AND name LIKE 'a1%'")
    await pool.execute(
        "INSERT INTO account (id, owner_id)"
        " SELECT gen_random_uuid(), 1 FROM generate_series(1, 300)"
    )
    rest = await pages(staging, sub, at, after=cut[-1].last_key)
    sent = Counter(ids(cut) + ids(rest))
    assert max(sent.values()) == 1
    assert set(sent) <= set(before)  # nothing written after the snapshot
    unchanged = await staging.fetch(
        "SELECT id::text FROM account WHERE owner_id NOT IN (1, 2) AND _version <= $1",
        max(before.values()),
    )
    assert {r[0] for r in unchanged} <= set(sent)  # every row untouched since arrived
    device = {row[0]: row[-1] for b in cut + rest for row in b.upserts}
    window = await staging.changes(at, [sub], batch_size=BATCH)
    async with asyncio.timeout(BOUND_S):
        async for batch in window:
            device.update((row[0], row[-1]) for row in batch.upserts)
            for key in batch.deletes:
                device.pop(key, None)
    assert device == await truth(staging)
