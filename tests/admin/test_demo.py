"""The demo org: the documented row counts, deterministic data, idempotent setup."""

from __future__ import annotations

from pathlib import Path

from syncd.demo import DEMO_MODEL, ensure_demo_org, load_demo_data
from syncd.model import ClientModel
from syncd.store import ControlStore, OrgStores, StagingStore
from tests.admin.conftest import AdminStack, start_stack, stop_stack
from tests.conftest import unique_name


async def _digest(store: StagingStore) -> list[tuple[object, ...]]:
    rows = await store.fetch(
        """
        SELECT (SELECT count(*) FROM "account"), (SELECT count(*) FROM "contact"),
               (SELECT count(*) FROM "task"),
               (SELECT md5(string_agg(id::text || name || revenue::text, ',' ORDER BY id))
                FROM "account"),
               (SELECT count(DISTINCT owner_id) FROM "account"),
               (SELECT max(team_id) FROM "task")
        """
    )
    return [tuple(r) for r in rows]


async def test_default_load_is_65k_rows_and_deterministic(org_stores: OrgStores) -> None:
    model = ClientModel.parse(DEMO_MODEL)
    first, second = unique_name("demo"), unique_name("demo")
    try:
        a = await org_stores.provision(first, model)
        b = await org_stores.provision(second, model)
        assert await load_demo_data(a) == {"account": 5000, "contact": 20000, "task": 40000}
        await load_demo_data(b, accounts=50)
        assert (await _digest(b))[0][:3] == (50, 200, 400)
        await org_stores.deprovision(second)
        b = await org_stores.provision(second, model)
        await load_demo_data(b)
        digest = await _digest(a)
        assert digest == await _digest(b)
        assert digest[0][4] == 200  # owners 1..200 all used
        assert digest[0][5] == 20
    finally:
        await org_stores.deprovision(first)
        await org_stores.deprovision(second)


def test_demo_profiles() -> None:
    model = ClientModel.parse(DEMO_MODEL)
    assert model.default_profile == "field_sales"
    assert model.profile("field_sales").offline
    assert not model.profile("office").offline


async def test_ensure_demo_org_is_idempotent_across_restarts(
    admin: AdminStack, control: ControlStore, pg_dsn: str, short_dir: Path
) -> None:
    name = unique_name("demo")
    loaded = await ensure_demo_org(admin.registry, name, accounts=10)
    assert loaded == {"account": 10, "contact": 40, "task": 80}
    runtime = admin.registry.get(name)
    assert runtime is not None
    assert runtime.model is not None
    assert runtime.model.version == 1

    stores = OrgStores(pg_dsn)
    (short_dir / "again").mkdir()
    again = await start_stack(control, stores, short_dir / "again")
    try:
        assert await ensure_demo_org(again.registry, name, accounts=10) is None
        again_runtime = again.registry.get(name)
        assert again_runtime is not None
        assert again_runtime.model is not None
        assert again_runtime.model.version == 1
        assert (await _digest(again_runtime.staging))[0][:3] == (10, 40, 80)
    finally:
        await stop_stack(again)


async def test_ensure_demo_org_finishes_an_interrupted_setup(admin: AdminStack) -> None:
    name = unique_name("demo")
    await admin.registry.control.add_org(name)  # killed right after adding the org
    assert await ensure_demo_org(admin.registry, name, accounts=3) == {
        "account": 3,
        "contact": 12,
        "task": 24,
    }
