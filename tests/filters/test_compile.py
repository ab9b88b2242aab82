"""Compiled filters: SQL shape (values only as parameters) and SQL == in-memory on real rows.

The agreement test draws random rows (nulls, mixed-case and non-ASCII text, negative
numbers, both sides of every bound) and random filter trees from a seeded generator, loads
the rows into a real staging database and checks that the database and ``matches`` select
exactly the same keys for each tree, related parents and memberships included.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from syncd.auth import Claims
from syncd.model import ClientModel, MembershipSpec
from syncd.server.plan import PlanError, plan_for
from syncd.store import Changeset, OrgStores, StagingStore, apply_changeset
from syncd.store.bound_filter import BindError, BoundFilter, bind_filter
from syncd.store.sql import ident
from tests.conftest import unique_name
from tests.support.field_model import field_model, with_filter

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
USER = "u1"


def bound(
    doc: dict[str, Any], entity: str = "account", user: str = USER, **params: object
) -> BoundFilter:
    m = ClientModel.parse(doc)
    values: dict[str, object] = {"user.id": "7", "user.teams": ["1", "2"], **params}
    f = bind_filter(m, m.profile("sales"), entity, values, user)
    assert f is not None
    return f


def compile_(f: BoundFilter) -> tuple[str, list[object]]:
    params: list[object] = []
    sql = f.sql_at(f.tree.entity, lambda c: f"t.{ident(c.name)}", params, NOW)
    return sql, params


def test_values_never_reach_the_sql_text() -> None:
    hostile = "x'); DROP TABLE account; --"
    f = bound(
        with_filter(
            "account",
            {"or": [{"column": "name", "op": "=", "value": hostile},
                    {"column": "name", "op": "in", "param": "claims.names"}]},
        ),
        **{"claims.names": [hostile, "b"]},  # type: ignore[arg-type]  # a claim, not `user`
    )  # fmt: skip
    sql, params = compile_(f)
    assert "DROP" not in sql
    assert sql == '((t."name" = $1::text) OR (t."name" = ANY($2::text[])))'
    assert params[0] == hostile
    assert sorted(params[1]) == sorted([hostile, "b"])  # type: ignore[call-overload]


def test_claims_are_coerced_to_the_column_type() -> None:
    f = bound(with_filter("account", {"owner": "owner_id"}, "sales"))
    sql, params = compile_(f)
    assert sql == '(t."owner_id" = $1::bigint)'
    assert params == [7]
    with pytest.raises(BindError, match=r"user\.id for column 'owner_id'"):
        bound(with_filter("account", {"owner": "owner_id"}), **{"user.id": "alice"})


def test_missing_claim_refuses_the_plan() -> None:
    m = ClientModel.parse(
        with_filter("account", {"column": "team_id", "op": "=", "param": "claims.region"})
    )
    claims = Claims("7", "o", 2**40, (), (), {})
    with pytest.raises(PlanError, match=r"'claims\.region' has no value"):
        plan_for(m, 1, "sales", claims)
    ok = plan_for(m, 1, "sales", Claims("7", "o", 2**40, (), (), {"region": 3}))
    other = plan_for(m, 1, "sales", Claims("8", "o", 2**40, (), (), {"region": 3}))
    moved = plan_for(m, 1, "sales", Claims("7", "o", 2**40, (), (), {"region": 4}))
    # Same bound values, same rows, same group; another region is another hash.
    assert ok.hashes["account"] == other.hashes["account"]
    assert ok.hashes["account"] != moved.hashes["account"]


def test_related_chain_nests_one_exists_per_level() -> None:
    f = bound(field_model(), "task")
    sql, params = compile_(f)
    assert sql.count("EXISTS") == 2
    assert '"_r1"' not in sql  # aliases are fixed templates, never quoted names
    assert 'FROM "contact" _r1' in sql
    assert 'FROM "account" _r2' in sql
    assert 'FROM "team_member" _m2_0' in sql
    assert params == [USER]
    assert f.dependencies == {"contact", "account", "team_member"}
    assert not f.time_relative


# --- SQL and memory agree ----------------------------------------------------------------

TEXTS = ["", "a", "B", "b", "ä", "Z", "zz", "ab", "É"]


def random_account(rng: random.Random, key: int) -> dict[str, Any]:
    def maybe(v: object) -> object:
        return None if rng.random() < 0.15 else v

    return {
        "id": uuid.UUID(int=key),
        "name": maybe(rng.choice(TEXTS)),
        "owner_id": maybe(rng.randint(-3, 9)),
        "team_id": maybe(rng.randint(0, 5)),
        "amount": maybe(Decimal(rng.randint(-500, 500)) / 100),
        "score": maybe(rng.uniform(-2, 2)),
        "active": maybe(rng.random() < 0.5),
        "modified_at": maybe(NOW - timedelta(hours=rng.randint(-72, 24 * 200))),
        "due": maybe(NOW.date() + timedelta(days=rng.randint(-20, 20))),
        "extra": maybe('{"k": 1}'),
    }


def random_leaf(rng: random.Random) -> dict[str, Any]:
    r = random_account(rng, 0)
    col = rng.choice(["name", "owner_id", "team_id", "amount", "score", "active"])
    value = r[col] if r[col] is not None else {"name": "b", "active": True}.get(col, 1)
    if isinstance(value, Decimal):
        value = str(value)
    kind = rng.randrange(9)
    if kind == 0:
        return {"column": col, "op": rng.choice(["is_null", "not_null"])}
    if kind == 1 and col != "active":
        return {"column": col, "op": rng.choice(["<", "<=", ">", ">=", "!="]), "value": value}
    if kind == 2:
        vals = [value] + ([value] if rng.random() < 0.3 else [])
        return {"column": col, "op": rng.choice(["in", "not_in"]), "value": vals}
    if kind == 3 and col not in ("active",):
        other = random_account(rng, 0)[col] or value
        lo, hi = sorted([value, str(other) if isinstance(other, Decimal) else other], key=_num)
        return {"column": col, "op": "between", "value": [lo, hi]}
    if kind == 4:
        return {"column": "modified_at", "op": "within", "last": rng.choice(["30d", "90d", "2h"])}
    if kind == 5:
        return {"column": "due", "op": "within", rng.choice(["last", "next"]): "7d"}
    if kind == 6:
        return {"team": "team_id"}
    if kind == 7:
        return {"column": "team_id", "op": rng.choice(["in", "not_in"]), "membership": "teams"}
    return {"column": col, "op": "=", "value": value}


def _num(v: Any) -> Any:
    return Decimal(v) if isinstance(v, str) and v.lstrip("-").replace(".", "").isdigit() else v


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return {"and": [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if depth < 3 and roll < 0.35:
        return {"or": [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if depth < 3 and roll < 0.45:
        return {"not": random_filter(rng, depth + 1)}
    return random_leaf(rng)


class StagingLookup:
    def __init__(self, rows: Mapping[str, Mapping[object, Mapping[str, object]]]) -> None:
        self.rows = rows

    def row(self, entity: str, key: object) -> Mapping[str, object] | None:
        return self.rows[entity].get(key)

    def members(self, membership: MembershipSpec, user: object) -> Collection[object]:
        return [
            r[membership.value]
            for r in self.rows[membership.entity].values()
            if r[membership.user] == user
        ]


@pytest.fixture
async def field_staging(org_stores: OrgStores) -> AsyncIterator[StagingStore]:
    org = unique_name("org")
    store = await org_stores.provision(org, ClientModel.parse(field_model()))
    try:
        yield store
    finally:
        await org_stores.deprovision(org)


async def test_sql_and_memory_select_the_same_rows(field_staging: StagingStore) -> None:
    rng = random.Random(20260601)
    model = ClientModel.parse(field_model())
    accounts = [random_account(rng, k) for k in range(1, 301)]
    contacts = [
        {"id": k, "account_id": rng.choice([None, uuid.UUID(int=rng.randint(1, 320))]),
         "email": None}
        for k in range(1, 201)
    ]  # fmt: skip
    # u1 belongs to a team with a null id (NOT IN turns unknown), u2 to real teams only,
    # u3 to none (IN of an empty set is false, NOT IN true, even for a null column).
    members = [
        {"id": 1, "user_id": "u1", "team_id": 1},
        {"id": 2, "user_id": "u1", "team_id": None},
        {"id": 3, "user_id": "u1", "team_id": 3},
        {"id": 4, "user_id": "u2", "team_id": 2},
        {"id": 5, "user_id": "u2", "team_id": 4},
    ]
    await apply_changeset(
        await field_staging.pool(),
        model,
        Changeset(upserts={"account": accounts, "contact": contacts, "team_member": members}),
    )
    lookup = StagingLookup(
        {
            "account": {r["id"]: r for r in accounts},
            "contact": {r["id"]: r for r in contacts},
            "team_member": {r["id"]: r for r in members},
        }
    )
    checked = selected = 0
    for _ in range(250):
        doc = with_filter("account", random_filter(rng))
        for entity in ("account", "contact"):
            try:
                f = bound(doc, entity, user=rng.choice(["u1", "u2", "u3"]))
            except BindError:
                continue
            params: list[object] = []
            cond = f.sql_at(f.tree.entity, lambda c: f"t.{ident(c.name)}", params, NOW)
            rows = await field_staging.fetch(
                f"SELECT t.id FROM {ident(entity)} t WHERE {cond}", *params
            )
            in_sql = {r[0] for r in rows}
            table = lookup.rows[entity]
            in_memory = {k for k, row in table.items() if f.matches(row, lookup, NOW)}
            assert in_sql == in_memory, doc["profiles"]["sales"]["entities"]["account"]
            checked += 1
            selected += len(in_sql)
    # The generator is not degenerate: filters select some rows, not all or none.
    assert checked >= 400
    assert 0.1 * checked * 150 < selected < 0.9 * checked * 250
