"""Filter documents: what is accepted, its canonical form, and errors that name the path."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.filters import Compare, InList, Membership, Param
from syncd.model import ClientModel, ModelError
from tests.support.field_model import field_model, with_filter

ACC = "profiles.sales.entities.account.filter"
CON = "profiles.sales.entities.contact.filter"


def test_shorthands_expand_to_canonical_nodes() -> None:
    m = ClientModel.parse(field_model())
    team = m.profile("sales").access("account")
    assert team is not None
    # A declared "teams" membership wins over the token's teams claim.
    assert team.node == InList("team_id", Membership("teams"))
    assert team.filter == {"column": "team_id", "op": "in", "membership": "teams"}
    owner = m.profile("owners").access("account")
    assert owner is not None
    assert owner.node == Compare("owner_id", "=", Param("user.id"))
    assert ClientModel.parse(m.to_json()) == m


def test_team_shorthand_uses_claims_without_a_membership_table() -> None:
    d = field_model()
    del d["memberships"]
    m = ClientModel.parse(d)
    assert m.profile("sales").access("account").node == InList(  # type: ignore[union-attr]
        "team_id", Param("user.teams")
    )


@pytest.mark.parametrize(
    "flt",
    [
        {"all": True},
        {"column": "name", "op": "<", "value": "m"},
        {"column": "amount", "op": "between", "value": ["1.5", 10]},
        {"column": "modified_at", "op": "within", "last": "90d"},
        {"column": "due", "op": "within", "next": "7d"},
        {"column": "extra", "op": "is_null"},
        {"column": "id", "op": "not_in", "value": ["00000000-0000-0000-0000-000000000001"]},
        {"column": "owner_id", "op": "IN", "param": "claims.owners"},
        {"not": {"or": [{"owner": "owner_id"}, {"column": "active", "op": "=", "value": True}]}},
        {"business_unit": "team_id"},
    ],
)
def test_every_kind_parses_and_round_trips(flt: dict[str, Any]) -> None:
    m = ClientModel.parse(with_filter("account", flt))
    again = ClientModel.parse(m.to_json())
    assert again == m


@pytest.mark.parametrize(
    ("entity", "flt", "path", "message"),
    [
        ("contact", {"related": {"entity": "account", "via": "nope"}},
         f"{CON}.related.via", "unknown column 'nope'"),
        ("contact", {"related": {"entity": "ghost", "via": "account_id"}},
         f"{CON}.related.entity", "unknown entity 'ghost'"),
        ("contact", {"related": {"entity": "account", "via": "email"}},
         f"{CON}.related.via", "account's key is uuid"),
        ("contact", {"related": {"entity": "team_member", "via": "id"}},
         CON, "not synced by this profile"),
        ("account", {"and": [{"owner": "owner_id"}, {"column": "owner_id", "op": "~"}]},
         f"{ACC}.and[1].op", "unknown op '~'"),
        ("account", {"column": "name", "op": ["="], "value": "m"}, f"{ACC}.op", "unknown op ['=']"),
        ("account", {"and": []}, f"{ACC}.and", "non-empty list"),
        ("account", {"column": "owner_id", "op": "=", "value": "seven"},
         f"{ACC}.value", "not a 64-bit integer"),
        ("account", {"column": "owner_id", "op": "=", "value": 1, "param": "user.id"},
         ACC, "exactly one of value, param"),
        ("account", {"column": "owner_id", "op": "=", "param": "user.password"},
         f"{ACC}.param", "unknown parameter"),
        ("account", {"column": "owner_id", "op": "=", "param": "user.teams"},
         f"{ACC}.param", "is a list"),
        ("account", {"column": "extra", "op": "=", "value": 1},
         f"{ACC}.op", "only supports is_null"),
        ("account", {"column": "active", "op": "<", "value": True},
         f"{ACC}.op", "ordered type"),
        ("account", {"column": "name", "op": "within", "last": "90d"},
         f"{ACC}.op", "timestamp or date"),
        ("account", {"column": "modified_at", "op": "within", "last": "3 months"},
         f"{ACC}.last", "not a duration"),
        ("account", {"column": "amount", "op": "between", "value": [1]},
         f"{ACC}.value", "[low, high]"),
        ("account", {"column": "modified_at", "op": "=", "value": "2026-01-01T00:00:00"},
         f"{ACC}.value", "with a time zone"),
        ("account", {"column": "team_id", "op": "in", "membership": "regions"},
         f"{ACC}.membership", "unknown membership"),
        ("account", {"column": "name", "op": "in", "membership": "teams"},
         f"{ACC}.membership", "membership 'teams' lists integer"),
        ("account", {"column": "name", "op": "in", "value": ["a", None]},
         f"{ACC}.value[1]", "use is_null"),
        ("account", {"owner": "owner_id", "team": "team_id"}, f"{ACC}.team", "unknown field"),
        ("account", {"where": 1}, ACC, "expected one of"),
        ("account", {"not": {"not": {"owner": "nope"}}}, f"{ACC}.not.not.owner",
         "unknown column"),
        ("account", [], ACC, "JSON object"),
    ],
)  # fmt: skip
def test_errors_name_the_offending_part(entity: str, flt: Any, path: str, message: str) -> None:
    with pytest.raises(ModelError) as exc:
        ClientModel.parse(with_filter(entity, flt))
    assert exc.value.path == path
    assert message in exc.value.message


def test_related_chains_are_acyclic_and_at_most_three_deep() -> None:
    d = field_model()
    d["profiles"]["sales"]["entities"]["account"] = {
        "filter": {"related": {"entity": "task", "via": "id"}}
    }
    # account.id is a uuid and task's key an integer: the type check fires first...
    with pytest.raises(ModelError, match="task's key is integer"):
        ClientModel.parse(d)
    d["entities"]["account"]["columns"]["task_id"] = "integer"
    d["profiles"]["sales"]["entities"]["account"] = {
        "filter": {"related": {"entity": "task", "via": "task_id"}}
    }
    with pytest.raises(ModelError, match="cycle: account -> task -> contact -> account"):
        ClientModel.parse(d)
    # A fourth level: a note of a task of a contact of an account.
    d = field_model()
    d["entities"]["note"] = {"key": "id", "columns": {"id": "integer", "task_id": "integer"}}
    d["entities"]["memo"] = {"key": "id", "columns": {"id": "integer", "note_id": "integer"}}
    ents = d["profiles"]["sales"]["entities"]
    ents["note"] = {"filter": {"related": {"entity": "task", "via": "task_id"}}}
    ClientModel.parse(d)  # three levels: fine
    ents["memo"] = {"filter": {"related": {"entity": "note", "via": "note_id"}}}
    with pytest.raises(ModelError) as exc:
        ClientModel.parse(d)
    assert exc.value.path == "profiles.sales.entities.memo.filter"
    assert "deeper than 3" in exc.value.message


@pytest.mark.parametrize(
    ("path", "value", "error_path", "message"),
    [
        ("entity", "ghost", "memberships.teams.entity", "unknown entity"),
        ("user", "nope", "memberships.teams.user", "unknown column 'nope'"),
        ("colour", "x", "memberships.teams.colour", "unknown field"),
    ],
)
def test_membership_declarations_are_checked(
    path: str, value: str, error_path: str, message: str
) -> None:
    d = field_model()
    d["memberships"]["teams"][path] = value
    with pytest.raises(ModelError) as exc:
        ClientModel.parse(d)
    assert exc.value.path == error_path
    assert message in exc.value.message
