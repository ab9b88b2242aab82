"""Which filters a plan splits into shared partitions, and that the split is exact.

A user checks two things: devices whose rows overlap get the same partition key for the
overlap (so the live hub reads it once), and a split filter's pieces select exactly the rows
of the whole filter, each row in one piece at most (so no device misses a row or gets it
twice).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.auth import Claims
from syncd.model import ClientModel, MembershipSpec
from syncd.server.plan import DevicePlan, Partition, plan_for
from syncd.store.bound_filter import BoundFilter
from syncd.store.feed import RowPredicate
from tests.support.field_model import field_model

CLAIM_TEAMS = {"column": "team_id", "op": "in", "param": "user.teams"}


def model(account: Any, *, memberships: bool = False, **profiles: Any) -> ClientModel:
    d = field_model()
    if not memberships:
        del d["memberships"]
    d["profiles"] = {
        "sales": {"offline": True, "entities": {"account": account, "task": {}}},
        **{
            name: {"offline": True, "entities": {"account": {"filter": flt}}}
            for name, flt in profiles.items()
        },
    }
    return ClientModel.parse(d)


def plan(m: ClientModel, user: str, teams: tuple[str, ...], profile: str = "sales") -> DevicePlan:
    return plan_for(m, 1, profile, Claims(user, "o", 2**40, (), teams, {"team": 2}))


class NoTables:
    """A lookup for filters that read no other table (these tests' filters never do)."""

    def row(self, entity: str, key: object) -> Mapping[str, object] | None:
        raise AssertionError(f"a filter of these tests read {entity}")

    def members(self, membership: MembershipSpec, user: object) -> Collection[object]:
        raise AssertionError("a filter of these tests read a membership")


def bound(f: RowPredicate | None) -> BoundFilter:
    """The daemon's filters are BoundFilters; the feed sees them as RowPredicates."""
    assert isinstance(f, BoundFilter)
    return f


def of(p: DevicePlan, entity: str) -> list[Partition]:
    return [x for x in p.partitions if x.subscription.entity.name == entity]


def keys(p: DevicePlan, entity: str = "account") -> set[str]:
    return {x.key for x in of(p, entity)}


def test_claim_lists_split_per_value_and_overlapping_users_share_a_piece() -> None:
    m = model({"filter": CLAIM_TEAMS})
    a, b = plan(m, "7", ("1", "2")), plan(m, "8", ("2", "3"))
    assert [(x.column and x.column.name, x.value) for x in of(a, "account")] == [
        ("team_id", 1),
        ("team_id", 2),
    ]
    shared = keys(a) & keys(b)
    assert len(shared) == 1
    (piece,) = [x for x in of(a, "account") if x.key in shared]
    assert piece.value == 2
    # Tokens and catch-up still follow whole entities: the team sets differ, so do hashes.
    assert a.hashes["account"] != b.hashes["account"]
    assert a.group_key != b.group_key


def test_the_team_shorthand_over_a_claim_splits_and_over_a_membership_does_not() -> None:
    claims = model({"filter": {"team": "team_id"}})
    assert len(of(plan(claims, "7", ("1", "2", "3")), "account")) == 3
    staged = model({"filter": {"team": "team_id"}}, memberships=True)
    a, b = plan(staged, "7", ()), plan(staged, "8", ())
    # Staging memberships move rows without a write of the row: one whole partition per user.
    assert [x.column for x in of(a, "account")] == [None]
    assert keys(a) != keys(b)


def test_unfiltered_entities_are_one_partition_for_every_user_and_profile() -> None:
    m = model({"filter": CLAIM_TEAMS}, owners={"owner": "owner_id"})
    m2 = copy.deepcopy(m)
    task = [keys(plan(x, u, t), "task") for x in (m, m2) for u, t in (("7", ("1",)), ("8", ()))]
    assert len(task[0]) == 1
    assert all(k == task[0] for k in task)


def test_an_equal_piece_is_shared_across_profiles() -> None:
    # A profile comparing team_id with one claim selects the same rows as the team-2 piece.
    m = model({"filter": CLAIM_TEAMS}, one={"column": "team_id", "op": "=", "param": "claims.team"})
    assert keys(plan(m, "9", (), "one")) < keys(plan(m, "7", ("2", "5")))


def test_only_exact_and_useful_splits_happen() -> None:
    whole = [
        {"column": "team_id", "op": "in", "value": [1, 2]},  # literal: the same for everyone
        {"column": "team_id", "op": "not_in", "param": "user.teams"},
        {"or": [CLAIM_TEAMS, {"column": "owner_id", "op": "=", "value": 1}]},
        {"and": [CLAIM_TEAMS, {"column": "modified_at", "op": "within", "last": "30d"}]},
        {"and": [CLAIM_TEAMS, {"column": "owner_id", "op": "in", "param": "user.roles"}]},
    ]
    for flt in whole:
        parts = of(plan(model({"filter": flt}), "7", ("1", "2")), "account")
        assert [x.column for x in parts] == [None], flt
    split = {"and": [CLAIM_TEAMS, {"column": "active", "op": "=", "value": True}]}
    parts = of(plan(model({"filter": split}), "7", ("1", "2")), "account")
    assert [x.value for x in parts] == [1, 2]
    row = {"team_id": 1, "active": False}
    assert not any(bound(x.subscription.filter).matches(row, NoTables()) for x in parts)


def test_a_user_without_teams_follows_no_piece() -> None:
    p = plan(model({"filter": CLAIM_TEAMS}), "7", ())
    assert of(p, "account") == []
    assert len(of(p, "task")) == 1


SPLIT = {"and": [CLAIM_TEAMS, {"column": "amount", "op": ">", "value": "10"}]}


@given(
    teams=st.sets(st.integers(0, 6), max_size=4),
    rows=st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, 8)), st.sampled_from(["5", "10", "11"])),
        max_size=30,
    ),
)
def test_pieces_select_exactly_the_whole_filter_each_row_once(
    teams: set[int], rows: list[tuple[int | None, str]]
) -> None:
    m = model({"filter": SPLIT})
    p = plan(m, "7", tuple(str(t) for t in teams))
    (whole,) = [s.filter for s in p.subscriptions if s.entity.name == "account"]
    assert whole is not None
    parts = [x.subscription.filter for x in of(p, "account")]
    for n, (team, amount) in enumerate(rows):
        row = {"id": uuid.UUID(int=n), "team_id": team, "amount": Decimal(amount)}
        hits = sum(1 for f in parts if bound(f).matches(row, NoTables()))
        assert hits == (1 if bound(whole).matches(row, NoTables()) else 0)


def test_owner_filter_is_one_piece_keyed_by_the_user_so_untouched_owners_cost_nothing() -> None:
    m = model({"filter": {"owner": "owner_id"}})
    a, b, again = plan(m, "7", ()), plan(m, "8", ()), plan(m, "7", ("1",))
    (piece,) = of(a, "account")
    assert piece.column is not None
    assert (piece.column.name, piece.value) == ("owner_id", 7)
    assert keys(a) != keys(b)
    assert keys(a) == keys(again)  # the same user's devices share it
    both = {"and": [{"owner": "owner_id"}, {"column": "active", "op": "=", "value": True}]}
    (anded,) = of(plan(model({"filter": both}), "7", ()), "account")
    assert anded.column is not None
    assert (anded.column.name, anded.value) == ("owner_id", 7)


RELATED = {"related": {"entity": "account", "via": "account_id"}}


def chain_model(account: Any, contact: Any = RELATED) -> ClientModel:
    d = field_model()
    d["profiles"] = {
        "field": {"offline": True, "entities": {"account": account, "contact": {"filter": contact}}}
    }
    d["default_profile"] = "field"
    return ClientModel.parse(d)


def contact_partition(m: ClientModel, user: str) -> Partition:
    (p,) = [
        p
        for p in plan(m, user, ("1",), "field").partitions
        if p.subscription.entity.name == "contact"
    ]
    return p


def test_related_and_membership_filters_are_keyed_by_the_user_with_one_shape() -> None:
    owner = chain_model({"filter": {"owner": "owner_id"}})
    members = chain_model({"filter": {"team": "team_id"}})  # over the staging teams membership
    with_plain = chain_model(
        {"filter": {"owner": "owner_id"}},
        {"and": [RELATED, {"column": "email", "op": "not_null"}]},
    )
    for m in (owner, members, with_plain):
        a, b = contact_partition(m, "7"), contact_partition(m, "8")
        assert a.keyed is not None
        assert b.keyed is not None
        assert a.key != b.key  # each user's rows are their own
        assert a.shape == b.shape  # but one question covers both
        assert {a.value, b.value} in ({7, 8}, {"7", "8"})
    assert contact_partition(owner, "7").shape != contact_partition(members, "7").shape
    (accounts,) = [
        p
        for p in plan(members, "7", (), "field").partitions
        if p.subscription.entity.name == "account"
    ]
    assert accounts.keyed is not None
    assert accounts.keyed.hops == ()  # a membership at the top


def test_filters_whose_rows_move_other_ways_are_not_keyed() -> None:
    cases = [
        (
            {"filter": {"owner": "owner_id"}},
            {"or": [RELATED, {"column": "email", "op": "=", "value": "x"}]},
        ),
        ({"filter": {"owner": "owner_id"}}, {"not": RELATED}),
        ({}, RELATED),  # an unfiltered parent: not per user at all
        ({"filter": {"column": "team_id", "op": "in", "param": "user.teams"}}, RELATED),
        ({"filter": {"column": "modified_at", "op": "within", "last": "30d"}}, RELATED),
        ({"filter": {"column": "team_id", "op": "not_in", "membership": "teams"}}, RELATED),
    ]
    for account, contact in cases:
        assert contact_partition(chain_model(account, contact), "7").keyed is None, (
            account,
            contact,
        )


def test_sessions_of_one_profile_share_the_welcome_summary_until_the_model_changes() -> None:
    first = model({"filter": CLAIM_TEAMS})
    a = plan_for(first, 1, "sales", Claims("6", "o", 2**40, (), ("1",), {}))
    b = plan_for(first, 1, "sales", Claims("7", "o", 2**40, (), ("2",), {}))
    assert a.hashes != b.hashes  # their filters differ by their claims
    assert a.summary is b.summary  # the model summary is one object, not one per session
    changed = field_model()
    changed["entities"]["account"]["columns"]["extra"] = "text"
    del changed["memberships"]
    changed["profiles"] = {"sales": {"offline": True, "entities": {"account": {}, "task": {}}}}
    c = plan_for(ClientModel.parse(changed), 2, "sales", Claims("6", "o", 2**40, (), ("1",), {}))
    account = next(e for e in c.summary.entities if e.name == "account")
    assert "extra" in [col.name for col in account.columns]
    assert c.summary.fingerprint != a.summary.fingerprint


def test_devices_following_the_same_piece_share_one_partition_object() -> None:
    """Equal keys are equal rows (the hub already serves every member of a key from one
    partition): plans share the object, so a team's devices hold one piece between them."""
    m = model({"filter": CLAIM_TEAMS})
    a, b = plan(m, "7", ("1", "2")), plan(m, "8", ("2", "3"))
    (in_a,) = [x for x in of(a, "account") if x.value == 2]
    (in_b,) = [x for x in of(b, "account") if x.value == 2]
    assert in_a is in_b
    assert {x.value for x in of(a, "account")} == {1, 2}  # each plan still has its own set
    assert {x.value for x in of(b, "account")} == {2, 3}
    wider = field_model()
    del wider["memberships"]
    wider["entities"]["account"]["columns"]["extra"] = "text"
    wider["profiles"] = {
        "sales": {"offline": True, "entities": {"account": {"filter": CLAIM_TEAMS}}}
    }
    other = ClientModel.parse(wider)
    (changed,) = [x for x in of(plan(other, "7", ("2",)), "account") if x.value == 2]
    assert changed is not in_a  # another wire layout is another key, another partition
    assert changed.key != in_a.key
