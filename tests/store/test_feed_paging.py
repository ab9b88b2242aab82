"""Paging of the change feed: resumable initial downloads, planned key ranges for filtered
scans, and windows that span many pages of upserts and tombstones.

Small batch sizes force every path that a million-row org takes with batches of thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import (
    ChangeBatch,
    Changeset,
    ChangeStream,
    RowFilter,
    StagingStore,
    Subscription,
    apply_changeset,
    bulk_load,
)
from tests.store.feed_helpers import BOUND_S, Replica


def accounts(n: int, owners: int = 4) -> list[tuple[Any, ...]]:
    return [(uuid.uuid4(), f"a{i}", i % owners, None, None, 0) for i in range(n)]


async def load(staging: StagingStore, crm_model: ClientModel, n: int) -> list[tuple[Any, ...]]:
    rows = accounts(n)
    pool = await staging.pool()
    async with pool.acquire() as conn:
        await bulk_load(conn, crm_model.entity("account"), rows)
        await conn.execute(
            "INSERT INTO note (id, body) SELECT i, 'n' || i FROM generate_series(1, $1) i", n
        )
    return rows


def owners_filter(*owners: int) -> RowFilter:
    return RowFilter.from_spec(
        {"column": "owner_id", "op": "IN", "param": "o"}, {"o": list(owners)}
    )


async def collect(stream: ChangeStream, stop_after: int | None = None) -> list[ChangeBatch]:
    out: list[ChangeBatch] = []
    async with asyncio.timeout(BOUND_S):
        async for batch in stream:
            out.append(batch)
            if stop_after is not None and len(out) == stop_after:
                break
    return out


def keys(batches: list[ChangeBatch], model: ClientModel) -> list[tuple[str, Any]]:
    return [(b.entity, row[model.entity(b.entity).key_index]) for b in batches for row in b.upserts]


@pytest.mark.parametrize("filtered", [False, True])
async def test_interrupted_initial_download_resumes_after_last_key(
    staging: StagingStore, crm_model: ClientModel, filtered: bool
) -> None:
    await load(staging, crm_model, 120)
    flt = owners_filter(1, 2) if filtered else None
    subs = (Subscription(crm_model.entity("account"), flt), Subscription(crm_model.entity("note")))
    full_stream = await staging.changes(None, subs, batch_size=7)
    full = keys(await collect(full_stream), crm_model)
    at = full_stream.checkpoint
    # Cut after a few batches, at one that left a cursor: a scan resumes only there, which is
    # where the daemon writes its checkpoints.
    cut: list[ChangeBatch] = []
    async with contextlib.aclosing(ChangeStream(staging, None, at, subs, 7).__aiter__()) as batches:
        async for batch in batches:
            cut.append(batch)
            if len(cut) >= 2 and batch.last_key is not None:
                break
    assert all(b.entity == "account" for b in cut)
    assert len(keys(cut, crm_model)) < len([k for k in full if k[0] == "account"])
    after = {"account": cut[-1].last_key}
    resumed = await collect(ChangeStream(staging, None, at, subs, 7, initial_after=after))
    union = keys(cut, crm_model) + keys(resumed, crm_model)
    assert max(Counter(union).values()) == 1
    assert sorted(union, key=str) == sorted(full, key=str)

    # Resumed after writes that followed the snapshot: those arrive in the next window.
    pool = await staging.pool()
    await pool.execute("UPDATE account SET status = 9 WHERE owner_id = 1")
    await pool.execute("DELETE FROM note WHERE id < 50")
    await pool.execute("INSERT INTO account (id, owner_id) VALUES ($1, 2)", uuid.uuid4())
    resumed = await collect(ChangeStream(staging, None, at, subs, 7, initial_after=after))
    window = await collect(await staging.changes(at, subs, batch_size=7))
    device: dict[tuple[str, Any], Any] = {}
    for b in cut + resumed + window:
        device.update(zip(keys([b], crm_model), b.upserts, strict=True))
        for k in b.deletes:
            device.pop((b.entity, k), None)
    owners = [1, 2] if filtered else list(range(5))
    truth = await pool.fetch(
        "SELECT id::text, _version FROM account WHERE owner_id = ANY($1::bigint[])", owners
    )
    notes = await pool.fetch("SELECT id, _version FROM note")
    assert {k: row[-1] for k, row in device.items()} == {
        **{("account", r[0]): r[1] for r in truth},
        **{("note", r[0]): r[1] for r in notes},
    }


async def test_last_key_is_the_last_row_of_each_initial_batch(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    await load(staging, crm_model, 30)
    note = crm_model.entity("note")
    batches = await collect(await staging.changes(None, [Subscription(note)], batch_size=8))
    assert [b.last_key for b in batches] == [8, 16, 24, 30]


async def test_last_key_is_the_last_row_of_each_filtered_initial_batch(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    await load(staging, crm_model, 60)
    sub = Subscription(crm_model.entity("account"), owners_filter(0, 1, 2, 3))
    batches = await collect(await staging.changes(None, [sub], batch_size=8))
    key = crm_model.entity("account").key_index
    assert [b.last_key for b in batches] == [b.upserts[-1][key] for b in batches]
    note = Subscription(crm_model.entity("note"))
    stream = await staging.changes(None, [note], batch_size=8)
    await collect(stream)
    pool = await staging.pool()
    await pool.execute("UPDATE note SET body = 'x' WHERE id <= 3")
    window = await collect(await staging.changes(stream.checkpoint, [note]))
    assert [b.last_key for b in window] == [None]


async def test_unfiltered_scan_resumes_from_every_cursor_with_exactly_the_rest(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """Resuming from any batch's cursor at the same snapshot yields exactly the rows not yet
    received."""
    await load(staging, crm_model, 120)
    note = crm_model.entity("note")
    stream = await staging.changes(None, [Subscription(note)], batch_size=8)
    batches = await collect(stream)
    assert all(len(b.upserts) <= 8 for b in batches)
    assert batches[-1].last_key is not None
    every = sorted(r[0] for r in await staging.fetch("SELECT id FROM note"))
    assert len(every) == 120
    got = [row[0] for b in batches for row in b.upserts]
    assert sorted(got) == every
    for i, batch in enumerate(batches):
        if batch.last_key is None:
            continue
        rest = await collect(
            ChangeStream(
                staging,
                None,
                stream.checkpoint,
                (Subscription(note),),
                8,
                initial_after={"note": batch.last_key},
            )
        )
        before = [row[0] for b in batches[: i + 1] for row in b.upserts]
        assert sorted(before + [row[0] for b in rest for row in b.upserts]) == every


async def test_filtered_initial_pages_hold_exactly_the_visible_matching_rows(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """Pages planned as key ranges: every matching row once, in key order, none of another
    owner, none written after the snapshot, and no page above the batch size."""
    rows = await load(staging, crm_model, 400)
    sub = Subscription(crm_model.entity("account"), owners_filter(0, 3))
    stream = await staging.changes(None, [sub], batch_size=9)
    pool = await staging.pool()
    batches: list[ChangeBatch] = []
    async with asyncio.timeout(BOUND_S):
        async for batch in stream:
            batches.append(batch)
            if len(batches) == 2:  # after the first page, ranges are planned: write into them
                await pool.execute(
                    "INSERT INTO account (id, owner_id) SELECT gen_random_uuid(), 0"
                    " FROM generate_series(1, 50)"
                )
                await pool.execute("DELETE FROM account WHERE owner_id = 3 AND name = 'a3'")
    got = [r[0] for b in batches for r in b.upserts]
    kept = {str(r[0]) for r in rows if r[2] in (0, 3) and r[1] != "a3"}
    deleted = {str(r[0]) for r in rows if r[2] == 3 and r[1] == "a3"}
    assert got == sorted(got)  # key order (uuid text sorts like uuid)
    assert len(got) == len(set(got))  # no row twice
    # Every row matching at the snapshot and still there arrives; none inserted after it does.
    # The row deleted mid-scan arrives only if its page was read (or read ahead) before the
    # delete; its tombstone then comes in the next window.
    assert kept <= set(got) <= kept | deleted
    assert max(len(b.upserts) for b in batches) <= 9


async def test_window_of_many_upserts_and_tombstones_arrives_once(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    rows = await load(staging, crm_model, 300)
    flt = owners_filter(0, 1)
    replica = Replica(
        staging,
        [Subscription(crm_model.entity("account"), flt), Subscription(crm_model.entity("note"))],
    )
    await replica.sync(batch_size=11)
    pool = await staging.pool()
    gone = [r[0] for r in rows[:80]]
    await apply_changeset(pool, crm_model, Changeset(deletes={"account": gone}))
    await pool.execute("UPDATE account SET status = status + 1")
    await pool.execute("UPDATE note SET body = 'again' WHERE id % 2 = 0")
    await pool.execute("DELETE FROM note WHERE id > 290")
    events = await replica.sync(batch_size=11)
    assert max(Counter(events).values()) == 1
    deleted = {e[2] for e in events if e[1] == "d"}
    assert deleted == {str(k) for k, _, o, *_ in rows[:80] if o in (0, 1)} | set(range(291, 301))
    truth = await pool.fetch("SELECT id::text, _version FROM account WHERE owner_id IN (0, 1)")
    notes = await pool.fetch("SELECT id, _version FROM note")
    assert {k: row[-1] for k, row in replica.rows.items()} == {
        **{("account", r[0]): r[1] for r in truth},
        **{("note", r[0]): r[1] for r in notes},
    }


async def test_feed_indexes_lead_with_txid_and_filter_columns(staging: StagingStore) -> None:
    defs = {
        r[0].split(" USING btree ")[1]
        for r in await staging.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'account'")
    }
    assert {"(_txid, id)", "(owner_id, id)", "(id)"} <= defs


async def test_planned_range_page_reads_only_its_range(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """With the (owner, key) index a range page is an index scan bounded by both values."""
    await load(staging, crm_model, 2000)
    await staging.fetch("ANALYZE account")
    conn: asyncpg.Connection = await staging.connect()
    try:
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT id FROM account WHERE owner_id = ANY($1::bigint[])"
            " AND id > $2::uuid AND id <= $3::uuid ORDER BY id LIMIT 9",
            [1, 2],
            uuid.UUID(int=2**126),
            uuid.UUID(int=2**126 + 2**120),
        )
    finally:
        await conn.close()
    assert "owner_id" in plan
    assert "Seq Scan" not in plan
