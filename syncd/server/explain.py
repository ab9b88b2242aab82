"""Why a row is, or is not, on a user's devices (``syncctl explain``).

Strategy. The answer is computed the way a session decides it, with the same parts: the
user's profile from the live model and the assignments, the plan ``plan_for`` builds from
the claims (so a filter that cannot bind is reported as the session would refuse it), and
the entity's bound filter evaluated against the current staging row by the daemon's own
in-memory evaluator in its tracing mode (``syncd.predicates.memory.trace``), which records
every node with its operands and three-valued result, and for a related filter the parent's
row and its own filter's trace, up the chain to the parent that decides. The evaluator reads
parents and memberships through a ``Lookup``; explain fills one from staging first (the
parent rows the chain reaches, the user's member values), so evaluation stays synchronous
and is the daemon's, not a copy.

Claims are not stored server-side (a token is the device's): the caller passes the ones
that matter (teams, roles, custom claims); ``user.id`` is the user. A device that synced
past the row's last change holds exactly what this says (ARCHITECTURE.md, decision 3).
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, assert_never
from uuid import UUID

import asyncpg

from syncd.auth import Claims
from syncd.model import ClientModel, Entity, MembershipSpec
from syncd.predicates.bound import (
    BAll,
    BAnd,
    BBetween,
    BCompare,
    BIn,
    BIsNull,
    BMember,
    BNot,
    BOr,
    BoundNode,
    BoundTree,
    BRelated,
    BWithin,
)
from syncd.predicates.memory import trace
from syncd.server.plan import PlanError, plan_for
from syncd.store.bound_filter import BoundFilter
from syncd.store.explain_reads import member_values, row_by_key

__all__ = ["Explanation", "explain_row", "jsonable"]


def jsonable(value: object) -> object:
    """A staging value as JSON shows it (uuid and numeric as text, times as ISO-8601)."""
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


@dataclass
class _Staged:
    """A ``Lookup`` over rows and member values read from staging beforehand."""

    rows: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    members_of: dict[tuple[str, str], list[object]] = field(default_factory=dict)

    def row(self, entity: str, key: object) -> Mapping[str, object] | None:
        return self.rows.get((entity, str(key)))

    def members(self, membership: MembershipSpec, user: object) -> Collection[object]:
        return self.members_of.get((membership.name, str(user)), [])


async def _gather(
    pool: asyncpg.Pool, tree: BoundTree, row: Mapping[str, Any], staged: _Staged
) -> None:
    """Read what evaluating ``tree`` on ``row`` will look up: parents, memberships."""
    if tree.root is None:
        return
    for node in _leaves(tree.root):
        match node:
            case BRelated():
                via = row.get(node.via.name)
                if via is None:
                    continue
                parent_entity = node.parent.entity
                key = (parent_entity.name, str(via))
                if key not in staged.rows:
                    staged.rows[key] = await row_by_key(pool, parent_entity, via)
                parent = staged.rows[key]
                if parent is not None:
                    await _gather(pool, node.parent, parent, staged)
            case BMember():
                mkey = (node.membership.name, str(node.user))
                if mkey not in staged.members_of:
                    staged.members_of[mkey] = await member_values(
                        pool, node.membership, node.table, node.user
                    )
            case BAll() | BCompare() | BIn() | BIsNull() | BBetween() | BWithin():
                pass
            case _:
                assert_never(node)


def _leaves(node: BoundNode) -> list[Any]:
    match node:
        case BAnd() | BOr():
            return [leaf for item in node.items for leaf in _leaves(item)]
        case BNot():
            return _leaves(node.item)
        case _:
            return [node]


@dataclass(frozen=True)
class Explanation:
    on_devices: bool
    reason: str
    profile: str | None = None
    filter: Any = None
    row: dict[str, Any] | None = None
    trace: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "on_devices": self.on_devices,
            "reason": self.reason,
            "profile": self.profile,
            "filter": self.filter,
            "row": self.row,
            "trace": self.trace,
        }


async def explain_row(
    pool: asyncpg.Pool,
    model: ClientModel,
    model_version: int,
    assigned: str | None,
    claims: Claims,
    entity: Entity,
    key: str,
    now: datetime | None = None,
) -> Explanation:
    """Whether the row ``key`` of ``entity`` belongs on the devices of ``claims``'s user."""
    try:
        plan = plan_for(model, model_version, assigned, claims)
    except PlanError as exc:
        return Explanation(False, f"the user cannot sync ({exc.code.name}): {exc.message}")
    profile = model.profile(plan.profile)
    access = profile.access(entity.name)
    if access is None:
        return Explanation(
            False, f"profile {plan.profile!r} does not sync entity {entity.name!r}", plan.profile
        )
    row = await row_by_key(pool, entity, key)
    shown = None if row is None else {k: jsonable(v) for k, v in row.items()}
    if row is None:
        return Explanation(
            False, f"staging has no {entity.name} row with key {key}", plan.profile, access.filter
        )
    (subscription,) = [s for s in plan.subscriptions if s.entity.name == entity.name]
    if subscription.filter is None:
        return Explanation(
            True,
            f"profile {plan.profile!r} sends every {entity.name} row",
            plan.profile,
            None,
            shown,
        )
    assert isinstance(subscription.filter, BoundFilter)  # what plan_for binds
    tree = subscription.filter.tree
    staged = _Staged()
    await _gather(pool, tree, row, staged)
    steps = trace(tree, row, staged, now or datetime.now(UTC))
    assert steps is not None
    verdict = steps.result is True
    said = {True: "true", False: "false", None: "unknown (a null compared)"}[steps.result]
    reason = f"profile {plan.profile!r}: the filter of {entity.name} is {said} for this row" + (
        "" if verdict else ", so devices do not hold it"
    )
    return Explanation(verdict, reason, plan.profile, access.filter, shown, steps.to_json())
