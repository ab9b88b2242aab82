"""A model push whose DDL deadlocks with a live upload still lands (found by issue 9's
convergence test: `model.put` answered "internal error").

The schema transaction locks every entity table in model order (account, then note); an
upload locks the tables it writes in op order. Here a writer holds `note` and then wants
`account` while the DDL holds `account` and waits for `note`: PostgreSQL aborts the one
that waited first, the DDL, and the store runs it again once the writer is done.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import StagingStore

pytestmark = pytest.mark.timeout(60)

_DDL_WAITS_FOR_NOTE = """
    SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
    WHERE NOT l.granted AND c.relname = 'note' AND l.mode = 'ShareRowExclusiveLock'
"""


async def _deadlock_the_ddl(staging: StagingStore, crm_model: ClientModel) -> asyncio.Task[None]:
    """Start a model push and close a lock cycle with it; returns the push."""
    pool = await staging.pool()
    async with pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("LOCK TABLE note IN ROW EXCLUSIVE MODE")  # as an upload's write
        provisioning = asyncio.create_task(staging.provision(crm_model))
        for _ in range(2000):  # until the DDL holds account and waits for note (<= 20 s)
            if await pool.fetchval(_DDL_WAITS_FOR_NOTE):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the model push never waited for the writer")
        # The writer now wants account, which the DDL holds: a cycle. The DDL waited first,
        # so its deadlock check fires first and PostgreSQL aborts it.
        await writer.execute("LOCK TABLE account IN ROW EXCLUSIVE MODE")
        await tx.commit()
    return provisioning


async def test_provision_retries_a_deadlock_with_a_writer(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    provisioning = await _deadlock_the_ddl(staging, crm_model)
    async with asyncio.timeout(20):
        await provisioning  # retried after the deadlock, and done


async def test_without_the_retry_the_same_cycle_fails(
    staging: StagingStore, crm_model: ClientModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle above is real: with one attempt the DDL is aborted as a deadlock."""
    monkeypatch.setattr("syncd.store.staging.PROVISION_ATTEMPTS", 1)
    provisioning = await _deadlock_the_ddl(staging, crm_model)
    with pytest.raises(asyncpg.DeadlockDetectedError):
        async with asyncio.timeout(20):
            await provisioning
