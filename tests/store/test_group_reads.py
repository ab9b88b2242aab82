"""Questions a reconnect storm's sessions ask together (``syncd.group_call``), on the real
staging and control databases: the shared answers are each caller's own answers, and no
snapshot handed to a caller is older than its question."""

from __future__ import annotations

import asyncio
import random

import pytest

from syncd.store import ControlStore, Snapshot, StagingStore
from syncd.store.feed import written_since

pytestmark = pytest.mark.timeout(60)

ENTITIES = ("account", "note")


async def write(staging: StagingStore, rng: random.Random, n: int) -> int:
    """One committed write to a random entity; its transaction id."""
    if rng.random() < 0.5:
        rows = await staging.fetch(
            "INSERT INTO note (id, body) VALUES ($1, 'x') RETURNING pg_current_xact_id()::text", n
        )
    else:
        rows = await staging.fetch(
            "INSERT INTO account (id, name, owner_id, status) VALUES (gen_random_uuid(), 'a', 1, 1)"
            " RETURNING pg_current_xact_id()::text"
        )
    return int(rows[0][0])


def sees(snapshot: Snapshot, txid: int) -> bool:
    return txid < snapshot.xmin or (txid < snapshot.xmax and txid not in snapshot.xip)


async def test_written_tables_asked_together_answer_as_asked_alone(staging: StagingStore) -> None:
    rng = random.Random(7)
    checkpoints = [await staging.current_checkpoint()]
    for n in range(1, 25):
        await write(staging, rng, n)
        checkpoints.append(await staging.current_checkpoint())
    questions = [
        (rng.choice(checkpoints), tuple(rng.sample(ENTITIES, rng.randint(1, 2))))
        for _ in range(200)
    ]
    together = await asyncio.gather(*(staging.written_tables(c, t) for c, t in questions))
    alone = [await written_since(staging.fetch, c, t) for c, t in questions]
    assert together == alone
    assert any(together)  # the histories make both answers occur
    assert not all(together)


async def test_a_shared_snapshot_sees_every_commit_made_before_it_was_asked(
    staging: StagingStore,
) -> None:
    rng = random.Random(11)

    async def commit_then_ask(n: int) -> None:
        txid = await write(staging, rng, n)
        snapshot = await staging.current_checkpoint()
        assert sees(snapshot, txid), (txid, snapshot)

    async def ask_often() -> None:
        for _ in range(30):
            await staging.current_checkpoint()

    checks = [commit_then_ask(n) for n in range(100, 160)]
    askers = [ask_often() for _ in range(4)]  # rounds are running whenever a check asks
    await asyncio.gather(*checks, *askers)


async def test_plans_saved_and_loaded_in_rounds(control: ControlStore) -> None:
    await control.add_org("o1")
    await control.add_org("o2")
    plans = [("o1", bytes([i]) * 16, {"account": f"h{i}"}) for i in range(5)]
    plans.append(("o2", bytes([1]) * 16, {"note": "other org"}))
    await control.save_plans([*plans, plans[0]])  # a round may name one plan twice
    await control.save_plans(plans[:2])  # saved again: only marked used
    missing = ("o1", b"\xff" * 16)
    loaded = await control.load_plans([(o, d) for o, d, _ in plans] + [missing])
    assert loaded == {(o, d): h for o, d, h in plans}
