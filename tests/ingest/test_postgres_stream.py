"""Provisioning from a PostgreSQL source, the initial copy, and streaming of every kind of
change into staging, through the real queue, daemon and logical replication slot."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg

from syncd.ingest.queue import IngestQueue
from tests.e2e.conftest import RunningDaemon
from tests.ingest.conftest import Staging, eventually, provisioned

A1, A2, A3 = (uuid.UUID(int=i) for i in (1, 2, 3))


async def test_provision_derives_the_model_and_copies_the_rows(
    daemon: RunningDaemon,
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
) -> None:
    await source.executemany(
        "INSERT INTO account (id, name, owner_id, amount) VALUES ($1, $2, $3, $4)",
        [(A1, "Acme", 7, Decimal("10.50")), (A2, "Globex", 8, None)],
    )
    await source.execute("INSERT INTO note VALUES (1, 'hello', '2026-01-02')")
    org = await provisioned(queue, staging, source_dsn)

    registry = daemon.daemon.registry
    assert registry is not None
    stored = await registry.control.get_model(org)
    assert stored is not None
    model = stored.model.to_json()
    assert sorted(model["entities"]) == ["account", "note"]  # audit has no key: left out
    assert model["entities"]["account"]["key"] == "id"
    assert model["entities"]["account"]["columns"] == {
        "id": "uuid",
        "name": "text",
        "owner_id": "integer",
        "amount": "numeric",
        "modified_at": "timestamp",
        "status": "integer",
    }
    assert model["entities"]["account"]["writable"] == ["name", "status"]
    rows = await staging.rows(org, "account", "id, name, amount")
    assert [(r["id"], r["name"], r["amount"]) for r in rows] == [
        (A1, "Acme", Decimal("10.50")),
        (A2, "Globex", None),
    ]
    assert [tuple(r) for r in await staging.rows(org, "note", "id, body")] == [(1, "hello")]


async def test_inserts_updates_deletes_key_changes_and_truncate_stream_in(
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
) -> None:
    org = await provisioned(queue, staging, source_dsn)

    async def names() -> list[tuple[uuid.UUID, str]]:
        return [(r["id"], r["name"]) for r in await staging.rows(org, "account", "id, name")]

    await source.execute(
        "INSERT INTO account (id, name, owner_id) VALUES ($1, 'one', 1), ($2, 'two', 2)", A1, A2
    )
    await eventually(lambda: _equals(names, [(A1, "one"), (A2, "two")]))
    await source.execute("UPDATE account SET name = 'uno' WHERE id = $1", A1)
    await source.execute("DELETE FROM account WHERE id = $1", A2)
    await eventually(lambda: _equals(names, [(A1, "uno")]))
    await source.execute("UPDATE account SET id = $2 WHERE id = $1", A1, A3)  # a key change
    await eventually(lambda: _equals(names, [(A3, "uno")]))
    # One transaction inserting, updating and deleting the same key ends with no row.
    async with source.transaction():
        await source.execute("INSERT INTO note VALUES (5, 'a', NULL)")
        await source.execute("UPDATE note SET body = 'b' WHERE id = 5")
        await source.execute("DELETE FROM note WHERE id = 5")
        await source.execute("INSERT INTO note VALUES (6, 'kept', NULL)")
    await eventually(lambda: _equals(lambda: _bodies(staging, org), [(6, "kept")]))
    await source.execute("TRUNCATE note")
    await eventually(lambda: _equals(lambda: _bodies(staging, org), []))
    # The truncate reached staging as deletes, which devices receive as tombstones.
    async with staging.connect(org) as conn:
        deletes = await conn.fetchval(
            "SELECT count(*) FROM _syncd_changes WHERE entity = 'note' AND key = '6' AND op = 'd'"
        )
    assert deletes == 1


async def test_a_large_transaction_arrives_whole(
    queue: IngestQueue,
    worker: object,
    staging: Staging,
    source: asyncpg.Connection,
    source_dsn: str,
) -> None:
    org = await provisioned(queue, staging, source_dsn)
    n = 6_000  # more than a pass reads (CHANGES_PER_PASS): one transaction all the same
    await source.execute(
        "INSERT INTO note SELECT g, 'n' || g, NULL FROM generate_series(1, $1) g", n
    )

    async def count() -> int:
        async with staging.connect(org) as conn:
            value: int = await conn.fetchval("SELECT count(*) FROM note")
            return value

    await eventually(lambda: _is(count, n))
    # Staging committed it in one transaction: every row carries the same transaction id.
    async with staging.connect(org) as conn:
        assert await conn.fetchval("SELECT count(DISTINCT _txid) FROM note") == 1


async def _bodies(staging: Staging, org: str) -> list[tuple[int, str]]:
    return [(r["id"], r["body"]) for r in await staging.rows(org, "note", "id, body")]


async def _equals(get: object, wanted: object) -> bool:
    assert callable(get)
    return bool(await get() == wanted)


async def _is(get: object, wanted: object) -> bool:
    assert callable(get)
    return bool(await get() == wanted)
