"""Provisioning: database per org, evolution that never loses rows, refused type changes."""

from __future__ import annotations

import copy
import uuid

import asyncpg
import pytest

from syncd.model import ClientModel
from syncd.store import OrgStores, ProvisionError, StagingStore, Subscription
from tests.conftest import CRM_MODEL, unique_name
from tests.store.feed_helpers import Replica


async def test_evolution_adds_entities_and_columns_without_losing_rows(
    staging: StagingStore, org_stores: OrgStores
) -> None:
    pool = await staging.pool()
    key = uuid.uuid4()
    await pool.execute("INSERT INTO account (id, name, owner_id) VALUES ($1, 'kept', 1)", key)
    doc = copy.deepcopy(CRM_MODEL)
    doc["entities"]["account"]["columns"]["region"] = "text"
    del doc["entities"]["account"]["columns"]["status"]
    doc["entities"]["account"]["writable"] = ["name"]
    doc["entities"]["task"] = {"key": "id", "columns": {"id": "integer", "done": "boolean"}}
    evolved = ClientModel.parse(doc)
    await org_stores.provision(staging.org, evolved)
    await org_stores.provision(staging.org, evolved)  # idempotent

    row = await pool.fetchrow("SELECT name, region, status FROM account WHERE id = $1", key)
    assert tuple(row) == ("kept", None, None)  # removed column stays, ignored
    await pool.execute("UPDATE account SET region = 'north' WHERE id = $1", key)
    await pool.execute("INSERT INTO task (id, done) VALUES (1, true)")
    replica = Replica(
        staging, [Subscription(evolved.entity("account")), Subscription(evolved.entity("task"))]
    )
    await replica.sync()
    assert replica.rows[("account", str(key))][:2] == (str(key), "kept")
    assert replica.rows[("account", str(key))][-2] == "north"
    assert replica.rows[("task", 1)][:2] == (1, True)


async def test_type_change_is_refused(staging: StagingStore, org_stores: OrgStores) -> None:
    doc = copy.deepcopy(CRM_MODEL)
    doc["entities"]["account"]["columns"]["status"] = "text"
    with pytest.raises(ProvisionError, match=r"account\.columns\.status: type change"):
        await org_stores.provision(staging.org, ClientModel.parse(doc))


async def test_deprovision_drops_the_database(org_stores: OrgStores, pg_dsn: str) -> None:
    org = unique_name("org")
    await org_stores.provision(org, ClientModel.parse(CRM_MODEL))
    await org_stores.deprovision(org)
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert (
            await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", f"syncd_org_{org}")
            is None
        )
    finally:
        await conn.close()


async def test_filter_columns_are_indexed(staging: StagingStore) -> None:
    indexed = await staging.fetch(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'account' AND indexdef LIKE '%owner_id%'"
    )
    assert len(indexed) == 1
