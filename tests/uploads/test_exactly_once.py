"""Replays return the original results; concurrent batches serialize; the write-back outbox."""

from __future__ import annotations

import asyncio
import uuid

from protocol import Upload
from syncd.store import writeback
from tests.uploads.conftest import Org, ins, new_id, upd


async def test_a_replayed_batch_returns_the_original_results_and_applies_nothing(
    org: Org,
) -> None:
    dev = org.device()
    key = new_id()
    batch = Upload(
        batch_id=str(uuid.uuid4()),
        ops=(ins("account", key, owner="u1", blob=b"\x01"), ins("account", "bad", owner="u1")),
    )
    first = await dev.send(batch)
    changes = await org.scalar("SELECT count(*) FROM _syncd_changes")
    again = await dev.send(batch)
    assert again == first
    assert await org.scalar("SELECT count(*) FROM _syncd_changes") == changes
    assert await org.scalar("SELECT count(*) FROM _syncd_writeback") == 1


async def test_concurrent_replays_of_one_batch_apply_it_once(org: Org) -> None:
    dev = org.device()
    batch = Upload(
        batch_id=str(uuid.uuid4()),
        ops=tuple(ins("account", new_id(), owner="u1") for _ in range(50)),
    )
    async with asyncio.timeout(60):
        results = await asyncio.gather(*(dev.send(batch) for _ in range(4)))
    assert all(r == results[0] for r in results)
    assert await org.scalar("SELECT count(*) FROM account") == 50
    assert await org.scalar("SELECT count(*) FROM _syncd_writeback") == 50


async def test_two_devices_editing_one_row_concurrently_get_one_applied_one_conflict(
    org: Org,
) -> None:
    key = new_id()
    (created,) = await org.device().upload(ins("account", key, owner="u1", name="base"))
    a, b = org.device(), org.device()
    async with asyncio.timeout(60):
        (ra,), (rb,) = await asyncio.gather(
            a.upload(upd("account", key, created.version, name="a")),
            b.upload(upd("account", key, created.version, name="b")),
        )
    assert sorted([ra.status, rb.status]) == ["applied", "conflict"]
    winner = "a" if ra.status == "applied" else "b"
    row = await org.row("account", key)
    assert row is not None
    assert row[1] == winner


async def test_batches_locking_the_same_rows_in_opposite_orders_all_finish(org: Org) -> None:
    keys = [new_id() for _ in range(40)]
    await org.device().upload(*(ins("account", k, owner="u1", visits=0) for k in keys))
    versions = {k: (await org.row("account", k))[-1] for k in keys}  # type: ignore[index]
    devices = [org.device() for _ in range(6)]

    async def edit(i: int) -> None:
        order = keys if i % 2 else list(reversed(keys))
        await devices[i].upload(*(upd("account", k, versions[k], visits=i) for k in order))

    async with asyncio.timeout(60):
        await asyncio.gather(*(edit(i) for i in range(6)))
    # Exactly one batch applied per row; every row is in one consistent state.
    assert await org.scalar("SELECT count(*) FROM _syncd_writeback WHERE op = 'update'") == 40


async def test_writeback_claim_done_and_retry(org: Org) -> None:
    dev = org.device()
    keys = [new_id() for _ in range(3)]
    await dev.upload(*(ins("account", k, owner="u1", blob=b"\xff") for k in keys))
    pool = await org.store.pool()
    first = await writeback.claim(pool, 2, lease_seconds=60)
    second = await writeback.claim(pool, 10, lease_seconds=60)
    assert [e.key for e in first + second] == keys
    assert first[0].values == {"owner": "u1", "blob": "/w=="}
    assert await writeback.claim(pool, 10, lease_seconds=60) == []
    assert await writeback.mark_done(pool, [first[0].id]) == 1
    assert await writeback.mark_failed(pool, [first[1].id], "CRM said no") == 1
    await org.server_write(
        "UPDATE _syncd_writeback SET next_attempt_at = now() WHERE id = $1", first[1].id
    )
    retried = await writeback.claim(pool, 10, lease_seconds=60)
    assert [(e.id, e.attempts, e.last_error) for e in retried] == [(first[1].id, 2, "CRM said no")]


async def test_writeback_lease_expiry_makes_entries_claimable_again(org: Org) -> None:
    await org.device().upload(ins("account", new_id(), owner="u1"))
    pool = await org.store.pool()
    (entry,) = await writeback.claim(pool, 10, lease_seconds=60)
    await org.server_write("UPDATE _syncd_writeback SET next_attempt_at = now() - interval '1s'")
    (again,) = await writeback.claim(pool, 10, lease_seconds=60)
    assert again.id == entry.id
    assert again.attempts == 2


async def test_concurrent_workers_never_claim_the_same_entry(org: Org) -> None:
    await org.device().upload(*(ins("account", new_id(), owner="u1") for _ in range(30)))
    pool = await org.store.pool()
    async with asyncio.timeout(30):
        claims = await asyncio.gather(*(writeback.claim(pool, 7, 60) for _ in range(5)))
    ids = [e.id for c in claims for e in c]
    assert len(ids) == len(set(ids)) == 30
