"""The change feed against real concurrent transactions (decision 1).

Each test writes with its own connections (as the ingest role would) and reads windows with
a Replica, then checks what a device would hold against the staging table itself.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import (
    Changeset,
    ResyncRequired,
    RowFilter,
    StagingStore,
    Subscription,
    apply_changeset,
    bulk_load,
)
from tests.store.feed_helpers import BOUND_S, Replica


def account(owner: int = 1, name: str = "a", key: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "id": key or uuid.uuid4(),
        "name": name,
        "owner_id": owner,
        "amount": Decimal("12.50"),
        "modified_at": datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        "status": 1,
    }


async def insert(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO account (id, name, owner_id, amount, modified_at, status)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        *row.values(),
    )


def subs(model: ClientModel) -> list[Subscription]:
    return [Subscription(model.entity("account")), Subscription(model.entity("note"))]


async def staging_versions(store: StagingStore) -> dict[tuple[str, Any], int]:
    rows = await store.fetch("SELECT id::text, _version FROM account")
    notes = await store.fetch("SELECT id, _version FROM note")
    out = {("account", r[0]): r[1] for r in rows}
    out.update({("note", r[0]): r[1] for r in notes})
    return out


async def test_wire_layout_and_casts(staging: StagingStore, crm_model: ClientModel) -> None:
    row = account()
    await apply_changeset(
        await staging.pool(),
        crm_model,
        Changeset(
            upserts={
                "account": [row],
                "note": [{"id": 7, "body": "hi", "day": datetime(1970, 1, 11).date()}],
            }
        ),
    )
    replica = Replica(staging, subs(crm_model))
    await replica.sync()
    got = replica.rows[("account", str(row["id"]))]
    micros = int(row["modified_at"].timestamp()) * 1_000_000 + 123456
    assert got[:6] == (str(row["id"]), "a", 1, "12.50", micros, 1)
    assert isinstance(got[6], int)  # _version
    assert replica.rows[("note", 7)][:3] == (7, "hi", 10)


async def test_first_started_transaction_committing_last_is_delivered_once(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    replica = Replica(staging, subs(crm_model))
    await replica.sync()
    early, late = account(name="early"), account(name="late")
    a = await staging.connect()
    b = await staging.connect()
    try:
        async with asyncio.timeout(BOUND_S):
            tx_a = a.transaction()
            await tx_a.start()
            await insert(a, early)  # takes its xid and _version first
            await insert(b, late)  # commits first (autocommit)
            version_a = await a.fetchval("SELECT _version FROM account WHERE id = $1", early["id"])
            version_b = await b.fetchval("SELECT _version FROM account WHERE id = $1", late["id"])
            assert version_a < version_b

            events = await replica.sync()
            assert events == [("account", "u", str(late["id"]))]

            await tx_a.commit()
            events = await replica.sync()
            assert events == [("account", "u", str(early["id"]))]
            assert await replica.sync() == []
    finally:
        await a.close()
        await b.close()
    assert all(n == 1 for n in replica.received.values())


async def test_aborted_transaction_never_delivered_and_does_not_block(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    replica = Replica(staging, subs(crm_model))
    await replica.sync()
    a = await staging.connect()
    try:
        tx = a.transaction()
        await tx.start()
        await insert(a, account(name="doomed"))
        committed = account(name="kept")
        await insert(await staging.pool(), committed)
        assert await replica.sync() == [("account", "u", str(committed["id"]))]
        await tx.rollback()
        assert await replica.sync() == []
    finally:
        await a.close()
    assert [r[1] for r in replica.rows.values()] == ["kept"]


async def test_long_transaction_delays_only_its_own_rows(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    replica = Replica(staging, subs(crm_model))
    await replica.sync()
    long = await staging.connect()
    pool = await staging.pool()
    try:
        tx = long.transaction()
        await tx.start()
        slow = account(name="slow")
        await insert(long, slow)
        for i in range(3):
            row = account(name=f"quick{i}")
            await insert(pool, row)
            assert await replica.sync() == [("account", "u", str(row["id"]))]
        await long.execute("UPDATE account SET status = 9 WHERE id = $1", slow["id"])
        await tx.commit()
        assert await replica.sync() == [("account", "u", str(slow["id"]))]
        assert replica.rows[("account", str(slow["id"]))][5] == 9
    finally:
        await long.close()


async def test_deletes_arrive_as_tombstones(staging: StagingStore, crm_model: ClientModel) -> None:
    pool = await staging.pool()
    rows = [account(name=f"r{i}") for i in range(5)]
    await apply_changeset(pool, crm_model, Changeset(upserts={"account": rows}))
    replica = Replica(staging, subs(crm_model))
    await replica.sync()
    assert len(replica.rows) == 5
    gone = [rows[0]["id"], rows[3]["id"]]
    await apply_changeset(pool, crm_model, Changeset(deletes={"account": gone}))
    events = await replica.sync()
    assert sorted(events) == sorted(("account", "d", str(k)) for k in gone)
    assert set(replica.rows) == {("account", str(r["id"])) for r in (rows[1], rows[2], rows[4])}


async def test_insert_then_delete_within_one_window(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    replica = Replica(staging, subs(crm_model))
    await replica.sync()
    row = account()
    pool = await staging.pool()
    await insert(pool, row)
    await apply_changeset(pool, crm_model, Changeset(deletes={"account": [row["id"]]}))
    assert await replica.sync() == [("account", "d", str(row["id"]))]
    assert replica.rows == {}


async def test_concurrent_writers_every_change_exactly_once(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    """Writers race on a small key space (upserts, updates, deletes, rollbacks) while a
    reader pulls windows; the replica must end equal to staging, with no version twice."""
    keys = [uuid.uuid4() for _ in range(30)]
    stop = asyncio.Event()
    replica = Replica(staging, subs(crm_model))
    await replica.sync()

    async def writer(seed: int) -> None:
        rnd = random.Random(seed)
        conn = await staging.connect()
        try:
            for _ in range(60):
                async with conn.transaction():
                    for _ in range(rnd.randint(1, 3)):
                        k = rnd.choice(keys)
                        if rnd.random() < 0.25:
                            await conn.execute("DELETE FROM account WHERE id = $1", k)
                        else:
                            await conn.execute(
                                "INSERT INTO account (id, name, owner_id, status)"
                                " VALUES ($1, 'w', $2, 0) ON CONFLICT (id)"
                                " DO UPDATE SET status = account.status + 1",
                                k,
                                seed,
                            )
                        await conn.execute(
                            "INSERT INTO note (id, body) VALUES ($1, 'n')"
                            " ON CONFLICT (id) DO UPDATE SET body = 'm'",
                            rnd.randint(1, 10),
                        )
        except asyncpg.DeadlockDetectedError:
            pass  # a writer may lose a deadlock; its transaction aborts, which is fine
        finally:
            await conn.close()

    async def reader() -> None:
        while not stop.is_set():
            await replica.sync(batch_size=rnd_batch.choice([1, 3, 50]))

    rnd_batch = random.Random(7)
    async with asyncio.timeout(BOUND_S * 3):
        reading = asyncio.create_task(reader())
        await asyncio.gather(*(writer(s) for s in range(4)))
        stop.set()
        await reading
        await replica.sync()

    truth = await staging_versions(staging)
    assert {k: row[-1] for k, row in replica.rows.items()} == truth
    assert max(replica.received.values()) == 1


async def test_compaction_forces_resync_of_old_checkpoints(
    staging: StagingStore, crm_model: ClientModel
) -> None:
    pool = await staging.pool()
    old = Replica(staging, subs(crm_model))
    await old.sync()
    await insert(pool, account())
    fresh = Replica(staging, subs(crm_model))
    await fresh.sync()
    await insert(pool, account())
    deleted = await staging.compact(horizon=fresh.checkpoint)
    assert deleted >= 1
    with pytest.raises(ResyncRequired):
        await old.sync()
    assert len(await fresh.sync()) == 1

    await insert(pool, account())
    assert await staging.compact(older_than=timedelta(0)) >= 1
    with pytest.raises(ResyncRequired):
        await fresh.sync()


async def test_owner_filter(staging: StagingStore, crm_model: ClientModel) -> None:
    pool = await staging.pool()
    mine, theirs = account(owner=1), account(owner=2)
    await apply_changeset(pool, crm_model, Changeset(upserts={"account": [mine, theirs]}))
    spec = crm_model.profile("field_sales").access("account")
    assert spec is not None
    assert spec.filter is not None
    flt = RowFilter.from_spec(spec.filter, {"user.id": 1})
    replica = Replica(staging, [Subscription(crm_model.entity("account"), flt)])
    assert await replica.sync() == [("account", "u", str(mine["id"]))]
    other = account(owner=2)
    await insert(pool, other)
    await insert(pool, account(owner=1, key=uuid.UUID(int=5)))
    await apply_changeset(
        pool, crm_model, Changeset(deletes={"account": [theirs["id"], mine["id"]]})
    )
    events = await replica.sync()
    # The other owner's key never reaches this device, not even as a tombstone.
    assert sorted(events) == sorted(
        [("account", "u", str(uuid.UUID(int=5))), ("account", "d", str(mine["id"]))]
    )
    in_filter = RowFilter.from_spec(
        {"column": "owner_id", "op": "IN", "param": "owners"}, {"owners": [1, 2]}
    )
    everyone = Replica(staging, [Subscription(crm_model.entity("account"), in_filter)])
    await everyone.sync()
    assert len(everyone.rows) == 2


async def test_pool_recovers_after_backends_are_terminated(
    staging: StagingStore, pg_dsn: str
) -> None:
    before = await staging.current_checkpoint()
    rows = await staging.fetch("SELECT pg_backend_pid(), current_database()")
    pids = [r[0] for r in rows]
    admin = await asyncpg.connect(pg_dsn)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            rows[0][1],
        )
        assert killed >= 1
    finally:
        await admin.close()
    after = await staging.current_checkpoint()
    assert after.xmax >= before.xmax
    assert [r[0] for r in await staging.fetch("SELECT pg_backend_pid()")] != pids


async def test_listen_wakes_on_commit_and_survives_reconnect(
    staging: StagingStore, pg_dsn: str
) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    listener = await staging.listen(got.put_nowait)
    try:
        pool = await staging.pool()
        async with asyncio.timeout(BOUND_S):
            await insert(pool, account())
            assert await got.get() == "account"
            admin = await asyncpg.connect(pg_dsn)
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%'"
                )
            finally:
                await admin.close()
            assert await got.get() == ""  # reconnected: assume anything changed
            await insert(pool, account())
            assert await got.get() == "account"
    finally:
        await listener.close()
    assert listener.reconnects == 1


async def test_bulk_load_is_logged_and_fed(staging: StagingStore, crm_model: ClientModel) -> None:
    replica = Replica(staging, subs(crm_model))
    await replica.sync()
    rows = [tuple(account(owner=i % 3).values()) for i in range(500)]
    pool = await staging.pool()
    async with pool.acquire() as conn:
        assert await bulk_load(conn, crm_model.entity("account"), rows) == 500
    events = await replica.sync(batch_size=64)
    assert len(events) == 500
    assert {e[2] for e in events} == {str(r[0]) for r in rows}
