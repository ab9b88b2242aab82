"""A device's lag (``syncctl devices``): the changes committed since its checkpoint, counted
by the snapshot rule, so a transaction that was running when the checkpoint was taken and
committed after it counts, and one the checkpoint saw does not (ARCHITECTURE.md decision 1)."""

from __future__ import annotations

from datetime import timedelta

from syncd.model import ClientModel
from syncd.store import Changeset, StagingStore, apply_changeset

ENTITIES = ["account", "note"]


async def note(staging: StagingStore, model: ClientModel, key: int) -> None:
    changes = Changeset(upserts={"note": [{"id": key, "body": f"n{key}"}]})
    await apply_changeset(await staging.pool(), model, changes)


async def test_lag_counts_what_the_snapshot_does_not_see(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    await note(staging, crm_model, 1)
    seen_all = await staging.current_checkpoint()
    # A transaction running while the next checkpoint is taken, committed after it.
    conn = await staging.connect()
    try:
        running = conn.transaction()
        await running.start()
        await conn.execute("INSERT INTO note (id, body) VALUES (2, 'late')")
        await conn.execute("INSERT INTO note (id, body) VALUES (3, 'late')")
        await note(staging, crm_model, 4)  # began after the running one, committed first
        during = await staging.current_checkpoint()
        assert during.xip  # so the snapshot lists the running transaction as running
        await running.commit()
    finally:
        await conn.close()
    await note(staging, crm_model, 5)
    now = await staging.current_checkpoint()

    lags = await staging.lag([seen_all, during, now], ENTITIES)
    behind, racing, current = lags[seen_all], lags[during], lags[now]
    assert behind is not None
    assert behind.changes == 4  # notes 2, 3, 4, 5
    assert racing is not None
    assert racing.changes == 3  # the running transaction's two rows count, and note 5
    assert current is not None
    assert (current.changes, current.oldest_at) == (0, None)
    assert behind.oldest_at is not None
    assert racing.oldest_at is not None
    assert behind.oldest_at <= racing.oldest_at


async def test_a_checkpoint_past_the_horizon_has_no_lag(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    old = await staging.current_checkpoint()
    await note(staging, crm_model, 1)
    await staging.compact(older_than=timedelta(0))
    await note(staging, crm_model, 2)
    newer = await staging.current_checkpoint()
    lags = await staging.lag([old, newer], ENTITIES)
    assert lags[old] is None  # its device downloads anew
    fresh = lags[newer]
    assert fresh is not None
    assert fresh.changes == 0
