"""Why a row is, or is not, on a user's devices (``syncctl explain``).

Strategy. The answer is computed the way a session decides it, with the same parts: the
user's profile from the live model and the assignments, the plan ``plan_for`` builds from
the claims (so a filter that cannot bind is reported as the session would refuse it), and
the entity's bound filter evaluated against the current staging row by the daemon's own
in-memory evaluator in its tracing mode (``syncd.predicates.memory.trace``), which records
every node with its operands and three-valued result, and for a related filter the parent's
row and its own filter's trace, up the chain to the parent that decides. The evaluator reads
parents and memberships through a ``Lookup``; explain fills one from staging with what the
evaluator asks for (the parent rows the chain reaches, the user's member values), reading
between evaluations, so evaluation stays synchronous and is the daemon's, not a copy, and
this module knows no kind of filter node.

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
from typing import Any
from uuid import UUID

import asyncpg

from syncd.auth import Claims
from syncd.model import ClientModel, Entity, MembershipSpec
from syncd.predicates.bound import BoundTree
from syncd.predicates.memory import Step, trace
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
    """A ``Lookup`` over rows and member values read from staging beforehand, which notes what
    the evaluator asked for that had not been read yet (``wanted``), to be read next."""

    model: ClientModel
    rows: dict[tuple[str, str], Mapping[str, object] | None] = field(default_factory=dict)
    members_of: dict[tuple[str, str], list[object]] = field(default_factory=dict)
    wanted_rows: dict[tuple[str, str], tuple[Entity, object]] = field(default_factory=dict)
    wanted_members: dict[tuple[str, str], tuple[MembershipSpec, object]] = field(
        default_factory=dict
    )

    def row(self, entity: str, key: object) -> Mapping[str, object] | None:
        at = (entity, str(key))
        if at not in self.rows:
            self.wanted_rows[at] = (self.model.entity(entity), key)
        return self.rows.get(at)

    def members(self, membership: MembershipSpec, user: object) -> Collection[object]:
        at = (membership.name, str(user))
        if at not in self.members_of:
            self.wanted_members[at] = (membership, user)
        return self.members_of.get(at, [])

    @property
    def wanted(self) -> bool:
        return bool(self.wanted_rows or self.wanted_members)

    async def read_wanted(self, pool: asyncpg.Pool) -> None:
        for at, (entity, key) in self.wanted_rows.items():
            self.rows[at] = await row_by_key(pool, entity, key)
        for at, (membership, user) in self.wanted_members.items():
            table = self.model.entity(membership.entity)
            self.members_of[at] = await member_values(pool, membership, table, user)
        self.wanted_rows.clear()
        self.wanted_members.clear()


async def _traced(
    pool: asyncpg.Pool, model: ClientModel, tree: BoundTree, row: Mapping[str, Any], now: datetime
) -> Step | None:
    """``trace`` of ``row``, with every parent row and member set it reads read from staging.

    The evaluator itself says what it reads: each pass that asked for something not read yet
    (a parent named by the row, the user's members, then the grandparent the parent names)
    is followed by reading it and evaluating again, until a pass asks for nothing new. Each
    related level adds one pass, so a chain of three takes at most four; the last pass ran on
    staging's rows alone, and nothing here knows the kinds of filter nodes.
    """
    staged = _Staged(model)
    while True:
        steps = trace(tree, row, staged, now)
        if not staged.wanted:
            return steps
        await staged.read_wanted(pool)


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
    steps = await _traced(pool, model, subscription.filter.tree, row, now or datetime.now(UTC))
    assert steps is not None
    verdict = steps.result is True
    said = {True: "true", False: "false", None: "unknown (a null compared)"}[steps.result]
    reason = f"profile {plan.profile!r}: the filter of {entity.name} is {said} for this row" + (
        "" if verdict else ", so devices do not hold it"
    )
    return Explanation(verdict, reason, plan.profile, access.filter, shown, steps.to_json())
