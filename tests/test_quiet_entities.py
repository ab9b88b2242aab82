"""A resuming session's quiet entities (``syncd.server.quiet_entities``), on a real staging
database: sessions of one checkpoint share one question whatever their number, and an
entity called quiet never has a row or tombstone in its window (random histories)."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from syncd.auth import Claims
from syncd.model import ClientModel
from syncd.server.plan import DevicePlan, plan_for
from syncd.server.quiet_entities import quiet_entities
from syncd.store import Snapshot, StagingStore
from syncd.store.feed import incremental_pages
from tests.support.statements import record_statements

pytestmark = pytest.mark.timeout(120)

USERS = [str(n) for n in range(40)]


def plan(model: ClientModel, user: str) -> DevicePlan:
    """The CRM's field-sales plan: the user's own accounts (a piece by owner), every note."""
    return plan_for(model, 1, None, Claims(user, "o", 2**40, (), (), {}))


async def ask(
    staging: StagingStore, since: Snapshot, plans: list[DevicePlan]
) -> list[frozenset[str]]:
    return list(
        await asyncio.gather(
            *(quiet_entities(staging, since, p.subscriptions, p.partitions, None) for p in plans)
        )
    )


async def test_sessions_of_one_checkpoint_share_one_question(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    since = await staging.current_checkpoint()
    await staging.fetch(
        "INSERT INTO account (id, name, owner_id, status) VALUES (gen_random_uuid(), 'a', 3, 1)"
    )
    plans = [plan(crm_model, user) for user in USERS]
    statements = record_statements(staging)
    together = await ask(staging, since, plans)
    asked_together = len(statements)
    statements.clear()
    alone = await ask(staging, since, plans[3:4])
    assert asked_together == len(statements)  # 40 sessions cost what one does
    assert together[3] == alone[0] == {"note"}  # its account piece was written
    assert all(q == {"account", "note"} for i, q in enumerate(together) if i != 3)
    await staging.fetch("INSERT INTO note (id, body) VALUES (1, 'x')")
    assert all("note" not in q for q in await ask(staging, since, plans))


async def test_a_quiet_entity_has_nothing_in_its_window(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    rng = random.Random(5)
    plans = [plan(crm_model, str(user)) for user in range(6)]
    ids: list[uuid.UUID] = []
    checkpoints: list[Snapshot] = []
    quiet_seen = read_seen = 0
    for step in range(40):
        checkpoints.append(await staging.current_checkpoint())
        for _ in range(rng.randint(0, 2)):
            op = rng.random()
            if op < 0.4 or not ids:
                ids.append(uuid.uuid4())
                await staging.fetch(
                    "INSERT INTO account (id, name, owner_id, status) VALUES ($1, 'a', $2, 1)",
                    ids[-1],
                    rng.randrange(6),
                )
            elif op < 0.7:
                await staging.fetch(
                    "UPDATE account SET owner_id = $2 WHERE id = $1",
                    rng.choice(ids),
                    rng.randrange(6),
                )
            elif op < 0.85:
                await staging.fetch("DELETE FROM account WHERE id = $1", rng.choice(ids))
            else:
                await staging.fetch(
                    "INSERT INTO note (id, body) VALUES ($1, 'n') ON CONFLICT (id) DO UPDATE"
                    " SET body = 'm'",
                    rng.randrange(5),
                )
        if step % 8 != 7:
            continue
        now = await staging.current_checkpoint()
        for since in rng.sample(checkpoints, min(4, len(checkpoints))):
            for p, quiet in zip(plans, await ask(staging, since, plans), strict=True):
                for sub in p.subscriptions:
                    rows = 0
                    async for batch in incremental_pages(staging.fetch, sub, since, now, 100):
                        rows += len(batch.upserts) + len(batch.deletes)
                    if sub.entity.name in quiet:
                        quiet_seen += 1
                        assert rows == 0, (sub.entity.name, p.subscriptions)
                    elif rows:
                        read_seen += 1
    assert quiet_seen  # the histories make both answers occur
    assert read_seen
