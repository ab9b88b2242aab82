"""Binding: a parsed filter plus one device's parameter values, resolved to typed leaves.

Strategy: everything that depends on who the device is happens here, once per plan: claim
values are coerced to the type of the column they are compared with (a claim ``"7"`` against
an integer column becomes ``7``), memberships get the user id in the membership table's type,
and each ``related`` node gets its parent entity's own bound filter (so a chain of three is
three nested bound trees). The result is all a compiler needs: ``syncd.filters.sql`` and
``syncd.filters.memory`` read these trees and never look at claims or JSON again. A value that
cannot fit raises ``BindError``, which the plan reports to the device as "filter cannot apply".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal as TypingLiteral
from typing import assert_never

from syncd.filters.nodes import (
    AllRows,
    And,
    Between,
    Compare,
    CompareOp,
    FilterNode,
    InList,
    IsNull,
    Literal,
    Membership,
    Not,
    Or,
    Param,
    Related,
    Within,
)
from syncd.filters.values import BadValue, coerce
from syncd.model import ClientModel, Column, Entity, MembershipSpec, Profile

__all__ = [
    "BAll",
    "BAnd",
    "BBetween",
    "BCompare",
    "BIn",
    "BIsNull",
    "BMember",
    "BNot",
    "BOr",
    "BRelated",
    "BWithin",
    "BindError",
    "BoundLeaf",
    "BoundNode",
    "BoundTree",
    "bind_tree",
]


class BindError(ValueError):
    """A device's parameters do not fit a filter (missing claim, wrong type)."""


@dataclass(frozen=True, slots=True)
class BAll:
    pass


@dataclass(frozen=True, slots=True)
class BCompare:
    column: Column
    op: CompareOp
    value: object


@dataclass(frozen=True, slots=True)
class BIn:
    column: Column
    values: tuple[object, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class BMember:
    column: Column
    membership: MembershipSpec
    table: Entity
    user: object  # the user id, typed like the membership table's user column
    negated: bool


@dataclass(frozen=True, slots=True)
class BIsNull:
    column: Column
    negated: bool


@dataclass(frozen=True, slots=True)
class BBetween:
    column: Column
    low: object
    high: object


@dataclass(frozen=True, slots=True)
class BWithin:
    column: Column
    direction: TypingLiteral["last", "next"]
    seconds: int


@dataclass(frozen=True, slots=True)
class BRelated:
    via: Column
    parent: BoundTree


@dataclass(frozen=True, slots=True)
class BAnd:
    items: tuple[BoundNode, ...]


@dataclass(frozen=True, slots=True)
class BOr:
    items: tuple[BoundNode, ...]


@dataclass(frozen=True, slots=True)
class BNot:
    item: BoundNode


#: The closed unions of bound nodes: every compiler matches over them and ends in
#: ``assert_never``, so mypy names each place a new kind must be handled.
BoundLeaf = BAll | BCompare | BIn | BMember | BIsNull | BBetween | BWithin | BRelated
BoundNode = BoundLeaf | BAnd | BOr | BNot


@dataclass(frozen=True, slots=True)
class BoundTree:
    """One entity's filter, bound; ``root`` None means every row of the entity."""

    entity: Entity
    root: BoundNode | None
    depth: int  # 0 for the subscribed entity, +1 per related parent (SQL alias names)


def bind_tree(
    model: ClientModel,
    profile: Profile,
    entity: str,
    params: Mapping[str, object],
    user: str,
    depth: int = 0,
) -> BoundTree:
    access = profile.access(entity)
    if access is None:  # parse-time checks make this unreachable for a parsed model
        raise BindError(f"entity {entity!r} is not in profile {profile.name!r}")
    e = model.entity(entity)
    if access.node is None:
        return BoundTree(e, None, depth)
    return BoundTree(e, _Binder(model, profile, e, params, user, depth).node(access.node), depth)


class _Binder:
    def __init__(
        self,
        model: ClientModel,
        profile: Profile,
        entity: Entity,
        params: Mapping[str, object],
        user: str,
        depth: int,
    ) -> None:
        self.model, self.profile, self.entity = model, profile, entity
        self.params, self.user, self.depth = params, user, depth

    def node(self, n: FilterNode) -> BoundNode:
        match n:
            case AllRows():
                return BAll()
            case And():
                return BAnd(tuple(self.node(i) for i in n.items))
            case Or():
                return BOr(tuple(self.node(i) for i in n.items))
            case Not():
                return BNot(self.node(n.item))
            case Related():
                parent = bind_tree(
                    self.model, self.profile, n.entity, self.params, self.user, self.depth + 1
                )
                return BRelated(self.entity.column(n.via), parent)
            case Compare():
                col = self.entity.column(n.column)
                return BCompare(col, n.op, self.scalar(col, n.operand))
            case InList():
                col = self.entity.column(n.column)
                source = n.source
                if isinstance(source, Membership):
                    spec = self.model.membership(source.name)
                    table = self.model.entity(spec.entity)
                    user = self.typed(table.column(spec.user), self.user, f"membership {spec.name}")
                    return BMember(col, spec, table, user, n.negated)
                return BIn(col, self.many(col, source), n.negated)
            case IsNull():
                return BIsNull(self.entity.column(n.column), n.negated)
            case Between():
                col = self.entity.column(n.column)
                return BBetween(col, self.scalar(col, n.low), self.scalar(col, n.high))
            case Within():
                return BWithin(self.entity.column(n.column), n.direction, n.seconds)
            case _:
                assert_never(n)

    def raw(self, p: Param) -> object:
        if p.name not in self.params or self.params[p.name] is None:
            raise BindError(f"parameter {p.name!r} has no value for this user")
        return self.params[p.name]

    def scalar(self, col: Column, operand: Literal | Param) -> object:
        if isinstance(operand, Literal):
            return self.typed(col, operand.value, "value")
        value = self.raw(operand)
        if isinstance(value, list | tuple):
            raise BindError(f"parameter {operand.name!r} is a list, the filter wants one value")
        return self.typed(col, value, operand.name)

    def many(self, col: Column, source: Literal | Param) -> tuple[object, ...]:
        if isinstance(source, Literal):
            values = source.value
            what = "value"
        else:
            values = self.raw(source)
            what = source.name
            if not isinstance(values, list | tuple):
                values = [values]  # a scalar claim used with 'in' is a one-element set
        assert isinstance(values, list | tuple)
        # Sorted and unique: equal sets must bind equal parameters (plan hashes, groups).
        typed = {self.typed(col, v, what) for v in values}
        return tuple(sorted(typed, key=repr))

    @staticmethod
    def typed(col: Column, value: object, what: str) -> object:
        try:
            return coerce(col.type, value)
        except BadValue as exc:
            raise BindError(f"{what} for column {col.name!r}: {exc}") from None
