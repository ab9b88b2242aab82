"""Each admin command through a real socket, against a real control database and staging."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jwt
import pytest

from syncd.auth import public_key_pem
from syncd.ctl import AdminClient
from syncd.server.admin_wire import AdminError, ErrorCode
from syncd.store import ControlStore, OrgStores
from syncd.store.sql import database_name
from tests.admin.conftest import AUDIENCE, ISSUER, AdminStack, start_stack, stop_stack
from tests.conftest import CRM_MODEL, unique_name


async def refused(client: AdminClient, command: str, args: dict[str, Any]) -> AdminError:
    with pytest.raises(AdminError) as info:
        await client.call(command, args)
    return info.value


async def new_org(client: AdminClient, model: dict[str, Any] | None = None) -> str:
    name = unique_name("org")
    await client.call("org.add", {"name": name})
    if model is not None:
        await client.call("model.put", {"org": name, "model": model})
    return name


async def database_exists(pg_dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def test_org_add_list_and_conflict(admin: AdminStack, client: AdminClient) -> None:
    name = unique_name("org")
    assert await client.call("org.add", {"name": name}) == {"name": name, "status": "active"}
    orgs = await client.call("org.list")
    assert orgs == [
        {"name": name, "status": "active", "loaded": True, "model_version": None, "sessions": 0}
    ]
    assert admin.registry.get(name) is not None
    err = await refused(client, "org.add", {"name": name})
    assert err.code is ErrorCode.CONFLICT


@pytest.mark.parametrize("name", ["Upper", "a_b", "-ab", "ab-", "a.b", "x" * 41, "", 7])
async def test_org_add_rejects_bad_names(client: AdminClient, name: object) -> None:
    err = await refused(client, "org.add", {"name": name})
    assert err.code is ErrorCode.BAD_REQUEST
    assert await client.call("org.list") == []


async def test_model_put_provisions_and_goes_live(
    admin: AdminStack, client: AdminClient, pg_dsn: str
) -> None:
    org = await new_org(client)
    result = await client.call("model.put", {"org": org, "model": CRM_MODEL})
    assert result["version"] == 1
    assert await database_exists(pg_dsn, database_name(org))
    runtime = admin.registry.get(org)
    assert runtime is not None
    assert runtime.model is not None
    assert runtime.model.version == 1
    assert runtime.model.model.fingerprint == result["fingerprint"]
    got = await client.call("model.get", {"org": org})
    assert got["version"] == 1
    assert set(got["model"]["entities"]) == {"account", "note"}

    evolved = copy.deepcopy(CRM_MODEL)
    evolved["entities"]["note"]["columns"]["author"] = "text"
    assert (await client.call("model.put", {"org": org, "model": evolved}))["version"] == 2
    assert (await client.call("model.get", {"org": org, "version": 1}))["version"] == 1
    assert (
        "author"
        in (await client.call("model.get", {"org": org}))["model"]["entities"]["note"]["columns"]
    )


def _bad_type() -> tuple[dict[str, Any], str]:
    m = copy.deepcopy(CRM_MODEL)
    m["entities"]["account"]["columns"]["amount"] = "money"
    return m, "entities.account.columns.amount"


def _unknown_entity_in_profile() -> tuple[dict[str, Any], str]:
    m = copy.deepcopy(CRM_MODEL)
    m["profiles"]["field_sales"]["entities"]["invoice"] = {}
    return m, "profiles.field_sales.entities.invoice"


def _type_change() -> tuple[dict[str, Any], str]:
    m = copy.deepcopy(CRM_MODEL)
    m["entities"]["account"]["columns"]["status"] = "text"
    return m, "entities.account.columns.status"


@pytest.mark.parametrize("make_bad", [_bad_type, _unknown_entity_in_profile, _type_change])
async def test_invalid_model_is_refused_and_previous_stays_live(
    admin: AdminStack, client: AdminClient, make_bad: Any
) -> None:
    org = await new_org(client, CRM_MODEL)
    bad, path = make_bad()
    err = await refused(client, "model.put", {"org": org, "model": bad})
    assert err.code is ErrorCode.INVALID_MODEL
    assert err.path == path
    assert (await client.call("model.get", {"org": org}))["version"] == 1
    runtime = admin.registry.get(org)
    assert runtime is not None
    assert runtime.model is not None
    assert runtime.model.version == 1


async def test_model_commands_on_unknown_org(client: AdminClient) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("model.put", {"org": "nosuch", "model": CRM_MODEL}),
        ("model.get", {"org": "nosuch"}),
        ("profile.list", {"org": "nosuch"}),
        ("org.remove", {"name": "nosuch"}),
    ]
    for command, args in cases:
        err = await refused(client, command, args)
        assert err.code is ErrorCode.UNKNOWN_ORG, command


async def test_model_get_of_missing_version(client: AdminClient) -> None:
    org = await new_org(client, CRM_MODEL)
    err = await refused(client, "model.get", {"org": org, "version": 9})
    assert err.code is ErrorCode.NOT_FOUND


async def test_profiles_assign_list_unassign(admin: AdminStack, client: AdminClient) -> None:
    org = await new_org(client, CRM_MODEL)
    await client.call("profile.assign", {"org": org, "user": "u1", "profile": "field_sales"})
    runtime = admin.registry.get(org)
    assert runtime is not None
    assert runtime.assignments == {"u1": "field_sales"}
    listed = await client.call("profile.list", {"org": org})
    assert listed == {
        "org": org,
        "profiles": ["field_sales"],
        "default_profile": "field_sales",
        "assignments": {"u1": "field_sales"},
    }
    err = await refused(client, "profile.assign", {"org": org, "user": "u2", "profile": "boss"})
    assert (err.code, err.path) == (ErrorCode.NOT_FOUND, "profile")
    assert (await client.call("profile.unassign", {"org": org, "user": "u1"}))["removed"]
    assert runtime.assignments == {}
    assert (await client.call("profile.list", {"org": org}))["assignments"] == {}


async def test_status_reports_orgs_and_models(client: AdminClient) -> None:
    org = await new_org(client, CRM_MODEL)
    status = await client.call("status")
    assert status["instance"] == "test-1"
    assert status["totals"] == {"orgs": 1, "sessions": 0}
    (entry,) = status["orgs"]
    assert entry["name"] == org
    assert entry["model_version"] == 1
    assert len(entry["fingerprint"]) == 64


async def test_configuration_survives_a_restart(
    admin: AdminStack, client: AdminClient, control: ControlStore, pg_dsn: str, short_dir: Any
) -> None:
    org = await new_org(client, CRM_MODEL)
    await client.call("profile.assign", {"org": org, "user": "u1", "profile": "field_sales"})
    stores = OrgStores(pg_dsn)
    second_dir = short_dir / "second"
    second_dir.mkdir()
    fresh = await start_stack(control, stores, second_dir)
    try:
        runtime = fresh.registry.get(org)
        assert runtime is not None
        assert runtime.model is not None
        assert runtime.model.version == 1
        assert runtime.assignments == {"u1": "field_sales"}
    finally:
        await stop_stack(fresh)


async def test_org_remove_drops_staging_and_unloads(
    admin: AdminStack, client: AdminClient, pg_dsn: str
) -> None:
    org = await new_org(client, CRM_MODEL)
    assert await client.call("org.remove", {"name": org}) == {"name": org, "removed": True}
    assert not await database_exists(pg_dsn, database_name(org))
    assert admin.registry.get(org) is None
    assert await client.call("org.list") == []


async def test_token_mint_in_dev_mode(admin: AdminStack, client: AdminClient) -> None:
    org = await new_org(client, CRM_MODEL)
    args = {"org": org, "user": "u7", "ttl_seconds": 60, "roles": ["rep"], "teams": ["t3"]}
    token = (await client.call("token.mint", args))["token"]
    claims = jwt.decode(
        token,
        public_key_pem(admin.token_key.read_bytes()),
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert (claims["sub"], claims["org"], claims["roles"], claims["teams"]) == (
        "u7",
        org,
        ["rep"],
        ["t3"],
    )
    assert claims["exp"] - claims["iat"] == 60


async def test_token_mint_refused_without_dev_key(
    control: ControlStore, org_stores: OrgStores, short_dir: Any
) -> None:
    stack = await start_stack(control, org_stores, short_dir, dev=False)
    try:
        async with await AdminClient.open_unix(stack.socket) as client:
            org = await new_org(client)
            err = await refused(client, "token.mint", {"org": org, "user": "u1"})
            assert err.code is ErrorCode.FORBIDDEN
            await client.call("org.remove", {"name": org})
    finally:
        await stop_stack(stack)


async def test_ingest_apply_writes_staging(admin: AdminStack, client: AdminClient) -> None:
    org = await new_org(client, CRM_MODEL)
    key = "2f1c7d5e-8a4b-4c1e-9f00-0123456789ab"
    row = {
        "id": key,
        "name": "Acme",
        "owner_id": 3,
        "amount": "12.50",
        "modified_at": "2026-01-02T03:04:05+00:00",
        "status": 1,
    }
    changes = [
        {"entity": "account", "upserts": [row]},
        {
            "entity": "note",
            "upserts": [{"id": 1, "body": "hi", "day": "2026-01-02"}, {"id": 2, "day": 20000}],
        },
    ]
    assert await client.call("ingest.apply", {"org": org, "changes": changes}) == {
        "org": org,
        "upserts": 3,
        "deletes": 0,
    }
    runtime = admin.registry.get(org)
    assert runtime is not None
    rows = await runtime.staging.fetch(
        'SELECT name, amount::text, modified_at, status FROM "account" WHERE id = $1::uuid', key
    )
    assert [tuple(r) for r in rows] == [
        ("Acme", "12.50", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), 1)
    ]
    await client.call("ingest.apply", {"org": org, "changes": [{"entity": "note", "deletes": [1]}]})
    notes = await runtime.staging.fetch('SELECT id, day::text FROM "note" ORDER BY id')
    assert [tuple(r) for r in notes] == [(2, "2024-10-04")]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"entity": "nope", "upserts": []}, "changes[1].entity"),
        ({"entity": "note", "upserts": [{"id": 1, "colour": "x"}]}, "changes[1].upserts[0].colour"),
        ({"entity": "note", "upserts": [{"id": "one"}]}, "changes[1].upserts[0].id"),
        ({"entity": "note", "upserts": [{"body": "no key"}]}, "changes[1].upserts[0]"),
        ({"entity": "account", "upserts": [{"id": "not-a-uuid"}]}, "changes[1].upserts[0].id"),
    ],
)
async def test_ingest_apply_rejects_bad_rows_whole(
    admin: AdminStack, client: AdminClient, change: dict[str, Any], path: str
) -> None:
    org = await new_org(client, CRM_MODEL)
    good = {"entity": "note", "upserts": [{"id": 5, "body": "kept out"}]}
    err = await refused(client, "ingest.apply", {"org": org, "changes": [good, change]})
    assert err.path == path
    runtime = admin.registry.get(org)
    assert runtime is not None
    assert await runtime.staging.fetch('SELECT 1 FROM "note"') == []


async def test_unknown_command_keeps_the_connection(client: AdminClient) -> None:
    err = await refused(client, "org.explode", {})
    assert err.code is ErrorCode.UNKNOWN_COMMAND
    assert await client.call("org.list") == []


async def test_concurrent_model_puts_get_dense_versions(
    client: AdminClient, admin: AdminStack
) -> None:
    org = await new_org(client)
    clients = [await AdminClient.open_unix(admin.socket) for _ in range(4)]
    # Four different models: pushing the live model again is a no-op (issue 11).
    profile: dict[str, Any] = {"offline": True, "entities": {"note": {}}}
    models = [
        {**CRM_MODEL, "profiles": {**CRM_MODEL["profiles"], f"extra{i}": profile}} for i in range(4)
    ]
    try:
        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(
                    c.call("model.put", {"org": org, "model": m})
                    for c, m in zip(clients, models, strict=True)
                )
            )
    finally:
        for c in clients:
            await c.close()
    assert sorted(r["version"] for r in results) == [1, 2, 3, 4]


async def test_commands_are_counted(admin: AdminStack, client: AdminClient) -> None:
    await client.call("org.list")
    await refused(client, "model.get", {"org": "nosuch"})
    counter = admin.metrics.admin_commands
    assert counter.labels("org.list", "ok")._value.get() == 1
    assert counter.labels("model.get", "unknown_org")._value.get() == 1
