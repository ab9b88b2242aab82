"""Binding: a parsed filter plus one device's parameter values, resolved to typed leaves.

Strategy: everything that depends on who the device is happens here, once per plan: claim
values are coerced to the type of the column they are compared with (a claim ``"7"`` against
an integer column becomes ``7``), memberships get the user id in the membership table's type,
and each ``related`` node gets its parent entity's own bound filter (so a chain of three is
three nested bound trees). The result is all a compiler needs: ``syncd.store.filter_sql`` and
``syncd.predicates.memory`` read these trees and never look at claims or JSON again. A value that
cannot fit raises ``BindError``, which the plan reports to the device as "filter cannot apply".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, assert_never
from typing import Literal as TypingLiteral

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
    "cutoff",
]


class BindError(ValueError):
    """A device's parameters do not fit a filter (missing claim, wrong type)."""


# Every bound node answers three questions about itself, which the plan, the feed and the
# live hub ask of a whole tree: ``identity`` (equal exactly when two nodes select the same
# rows: plans hash it, the hub groups devices by it), ``tables`` (the other staging tables
# whose writes can move rows in or out) and ``reads_clock`` (whether the passing of time can).
# A node that depends on neither moves only when its own row is written, which is what lets a
# filter split into partitions (``syncd.predicates.partition``).


def _v(value: object) -> Any:
    """A bound value in identity form: JSON scalars as is, others tagged with their type."""
    return value if isinstance(value, bool | int | str) else [type(value).__name__, str(value)]


_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class BAll:
    """Every row (a profile entity with no filter, or ``{"all": true}``)."""

    def identity(self) -> Any:
        return ["all"]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BCompare:
    """A column compared with a value already coerced to the column's type."""

    column: Column
    op: CompareOp
    value: object

    def identity(self) -> Any:
        return [self.op, self.column.name, _v(self.value)]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BIn:
    """A column in (or not in) a list of values coerced to its type."""

    column: Column
    values: tuple[object, ...]
    negated: bool

    def identity(self) -> Any:
        op = "not_in" if self.negated else "in"
        return [op, self.column.name, [_v(v) for v in self.values]]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BMember:
    """A column in the values a staging membership table lists for this user."""

    column: Column
    membership: MembershipSpec
    table: Entity
    user: object  # the user id, typed like the membership table's user column
    negated: bool

    def identity(self) -> Any:
        op = "not_member" if self.negated else "member"
        return [op, self.column.name, self.membership.name, _v(self.user)]

    def tables(self) -> frozenset[str]:
        return frozenset((self.table.name,))

    def reads_clock(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BIsNull:
    """A column that is (or is not) null."""

    column: Column
    negated: bool

    def identity(self) -> Any:
        return ["not_null" if self.negated else "is_null", self.column.name]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BBetween:
    """A column between two values, both ends included."""

    column: Column
    low: object
    high: object

    def identity(self) -> Any:
        return ["between", self.column.name, _v(self.low), _v(self.high)]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BWithin:
    """A point-in-time column within the last or next ``seconds`` of "now"."""

    column: Column
    direction: TypingLiteral["last", "next"]
    seconds: int

    def identity(self) -> Any:
        return ["within", self.column.name, self.direction, self.seconds]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class BRelated:
    """The row's parent (through column ``via``) matches the parent entity's bound filter."""

    via: Column
    parent: BoundTree

    def identity(self) -> Any:
        return ["related", self.via.name, self.parent.identity()]

    def tables(self) -> frozenset[str]:
        return frozenset((self.parent.entity.name,)) | self.parent.tables()

    def reads_clock(self) -> bool:
        return self.parent.reads_clock()


@dataclass(frozen=True, slots=True)
class BAnd:
    """Every item holds."""

    items: tuple[BoundNode, ...]

    def identity(self) -> Any:
        return ["and", [i.identity() for i in self.items]]

    def tables(self) -> frozenset[str]:
        return frozenset().union(*(i.tables() for i in self.items))

    def reads_clock(self) -> bool:
        return any(i.reads_clock() for i in self.items)


@dataclass(frozen=True, slots=True)
class BOr:
    """At least one item holds."""

    items: tuple[BoundNode, ...]

    def identity(self) -> Any:
        return ["or", [i.identity() for i in self.items]]

    def tables(self) -> frozenset[str]:
        return frozenset().union(*(i.tables() for i in self.items))

    def reads_clock(self) -> bool:
        return any(i.reads_clock() for i in self.items)


@dataclass(frozen=True, slots=True)
class BNot:
    """The item does not hold."""

    item: BoundNode

    def identity(self) -> Any:
        return ["not", self.item.identity()]

    def tables(self) -> frozenset[str]:
        return self.item.tables()

    def reads_clock(self) -> bool:
        return self.item.reads_clock()


#: The closed unions of bound nodes: the compilers (``syncd.store.filter_sql``, ``memory``) match
#: over them and end in ``assert_never``, so mypy names each place a new kind must be handled.
BoundLeaf = BAll | BCompare | BIn | BMember | BIsNull | BBetween | BWithin | BRelated
BoundNode = BoundLeaf | BAnd | BOr | BNot


@dataclass(frozen=True, slots=True)
class BoundTree:
    """One entity's filter, bound; ``root`` None means every row of the entity."""

    entity: Entity
    root: BoundNode | None
    depth: int  # 0 for the subscribed entity, +1 per related parent (SQL alias names)

    def identity(self) -> list[Any]:
        return [self.entity.name, None if self.root is None else self.root.identity()]

    def tables(self) -> frozenset[str]:
        return _NONE if self.root is None else self.root.tables()

    def reads_clock(self) -> bool:
        return self.root is not None and self.root.reads_clock()


def bind_tree(
    model: ClientModel,
    profile: Profile,
    entity: str,
    params: Mapping[str, object],
    user: str,
    depth: int = 0,
) -> BoundTree:
    """``entity``'s filter in ``profile`` with this device's parameters bound (BindError if one
    is missing or does not fit its column); the root is None when the profile takes all rows.
    """
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


def cutoff(node: BWithin, now: datetime) -> object:
    """The bound a ``within`` node compares with, for one fixed "now"."""
    delta = timedelta(seconds=node.seconds)
    edge = now - delta if node.direction == "last" else now + delta
    at_instant = node.column.kind.at_instant
    if at_instant is None:  # the parser admits ``within`` on point-in-time types only
        raise ValueError(f"'within' on a {node.column.type} column")
    return at_instant(edge)
