"""Bound filters: a parsed filter plus one device's parameter values, one class per kind.

Strategy: everything that depends on who the device is happens at binding, once per plan:
claim values are coerced to the type of the column they are compared with (a claim ``"7"``
against an integer column becomes ``7``), memberships get the user id in the membership
table's type, and each ``related`` node gets its parent entity's own bound filter (so a chain
of three is three nested bound trees). A value that cannot fit raises ``BindError``, which the
plan reports to the device as "filter cannot apply".

Each bound class holds what its kind means above the syntax: how it is bound from its parsed
node (``bind``, which ``Binder.node`` dispatches to), what it reads and whether it can move
without a write of its own (``identity``, ``tables``, ``reads_clock``), and its value on a row
held in memory, traced on request (``truth``, by the three-valued helpers of
``syncd.predicates.memory``). Its SQL form is the store's (``syncd.store.filter_sql``): SQL is
written only there. So a new kind is one class here, plus the syntax class and its SQL; mypy
names the ``match`` statements that must learn it (``Binder.node`` here, the SQL compilers).
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
from syncd.predicates.memory import (
    Lookup,
    Row,
    Step,
    Steps,
    Truth,
    compare,
    conjunction,
    disjunction,
    is_in,
    negate,
)
from syncd.predicates.memory import Related as RelatedStep

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
    "Binder",
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
# filter split into partitions (``syncd.predicates.partition``). ``truth`` is its value on a
# row (``Lookup`` supplies related parents and membership sets); given a ``steps`` list, it
# also appends its ``Step`` there, after its children's, which is how ``trace`` records why.


def _v(value: object) -> Any:
    """A bound value in identity form: JSON scalars as is, others tagged with their type."""
    return value if isinstance(value, bool | int | str) else [type(value).__name__, str(value)]


_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class BAll:
    """Every row (a profile entity with no filter, or ``{"all": true}``)."""

    @classmethod
    def bind(cls, n: AllRows, b: Binder) -> BAll:
        return cls()

    def identity(self) -> Any:
        return ["all"]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        if steps is not None:
            steps.append(Step("all", True))
        return True


@dataclass(frozen=True, slots=True)
class BCompare:
    """A column compared with a value already coerced to the column's type."""

    column: Column
    op: CompareOp
    value: object

    @classmethod
    def bind(cls, n: Compare, b: Binder) -> BCompare:
        col = b.column(n.column)
        return cls(col, n.op, b.scalar(col, n.operand))

    def identity(self) -> Any:
        return [self.op, self.column.name, _v(self.value)]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        value = row.get(self.column.name)
        result = compare(self.op, value, self.value)
        if steps is not None:
            steps.append(Step("compare", result, self.column.name, self.op, value, self.value))
        return result


@dataclass(frozen=True, slots=True)
class BIn:
    """A column in (or not in) a list of values coerced to its type."""

    column: Column
    values: tuple[object, ...]
    negated: bool

    @classmethod
    def bind(cls, n: InList, b: Binder) -> BIn | BMember:
        """A literal list or a list claim binds to its values; a membership to ``BMember``."""
        col = b.column(n.column)
        source = n.source
        if isinstance(source, Membership):
            return BMember.bind(col, source, n.negated, b)
        return cls(col, b.many(col, source), n.negated)

    def identity(self) -> Any:
        op = "not_in" if self.negated else "in"
        return [op, self.column.name, [_v(v) for v in self.values]]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        value = row.get(self.column.name)
        found = is_in(value, self.values)
        result = negate(found) if self.negated else found
        if steps is not None:
            kind = "not_in" if self.negated else "in"
            steps.append(Step(kind, result, self.column.name, kind, value, self.values))
        return result


@dataclass(frozen=True, slots=True)
class BMember:
    """A column in the values a staging membership table lists for this user."""

    column: Column
    membership: MembershipSpec
    table: Entity
    user: object  # the user id, typed like the membership table's user column
    negated: bool

    @classmethod
    def bind(cls, column: Column, source: Membership, negated: bool, b: Binder) -> BMember:
        spec = b.model.membership(source.name)
        table = b.model.entity(spec.entity)
        user = b.typed(table.column(spec.user), b.user, f"membership {spec.name}")
        return cls(column, spec, table, user, negated)

    def identity(self) -> Any:
        op = "not_member" if self.negated else "member"
        return [op, self.column.name, self.membership.name, _v(self.user)]

    def tables(self) -> frozenset[str]:
        return frozenset((self.table.name,))

    def reads_clock(self) -> bool:
        return False

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        value = row.get(self.column.name)
        members = lookup.members(self.membership, self.user)
        found = is_in(value, members)
        result = negate(found) if self.negated else found
        if steps is not None:
            kind = "not_member" if self.negated else "member"
            listed = sorted(members, key=repr)
            shown = {"membership": self.membership.name, "user": self.user, "values": listed}
            steps.append(Step(kind, result, self.column.name, kind, value, shown))
        return result


@dataclass(frozen=True, slots=True)
class BIsNull:
    """A column that is (or is not) null."""

    column: Column
    negated: bool

    @classmethod
    def bind(cls, n: IsNull, b: Binder) -> BIsNull:
        return cls(b.column(n.column), n.negated)

    def identity(self) -> Any:
        return ["not_null" if self.negated else "is_null", self.column.name]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        value = row.get(self.column.name)
        result = (value is not None) if self.negated else (value is None)
        if steps is not None:
            kind = "not_null" if self.negated else "is_null"
            steps.append(Step(kind, result, self.column.name, kind, value))
        return result


@dataclass(frozen=True, slots=True)
class BBetween:
    """A column between two values, both ends included."""

    column: Column
    low: object
    high: object

    @classmethod
    def bind(cls, n: Between, b: Binder) -> BBetween:
        col = b.column(n.column)
        return cls(col, b.scalar(col, n.low), b.scalar(col, n.high))

    def identity(self) -> Any:
        return ["between", self.column.name, _v(self.low), _v(self.high)]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return False

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        value = row.get(self.column.name)
        result = conjunction((compare(">=", value, self.low), compare("<=", value, self.high)))
        if steps is not None:
            bounds = (self.low, self.high)
            steps.append(Step("between", result, self.column.name, "between", value, bounds))
        return result


@dataclass(frozen=True, slots=True)
class BWithin:
    """A point-in-time column within the last or next ``seconds`` of "now"."""

    column: Column
    direction: TypingLiteral["last", "next"]
    seconds: int

    @classmethod
    def bind(cls, n: Within, b: Binder) -> BWithin:
        return cls(b.column(n.column), n.direction, n.seconds)

    def identity(self) -> Any:
        return ["within", self.column.name, self.direction, self.seconds]

    def tables(self) -> frozenset[str]:
        return _NONE

    def reads_clock(self) -> bool:
        return True

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        op = ">=" if self.direction == "last" else "<="
        value = row.get(self.column.name)
        bound = cutoff(self, now)
        result = compare(op, value, bound)
        if steps is not None:
            steps.append(Step("within", result, self.column.name, op, value, bound))
        return result


@dataclass(frozen=True, slots=True)
class BRelated:
    """The row's parent (through column ``via``) matches the parent entity's bound filter."""

    via: Column
    parent: BoundTree

    @classmethod
    def bind(cls, n: Related, b: Binder) -> BRelated:
        return cls(b.column(n.via), b.parent(n.entity))

    def identity(self) -> Any:
        return ["related", self.via.name, self.parent.identity()]

    def tables(self) -> frozenset[str]:
        return frozenset((self.parent.entity.name,)) | self.parent.tables()

    def reads_clock(self) -> bool:
        return self.parent.reads_clock()

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        via = row.get(self.via.name)
        parent = None if via is None else lookup.row(self.parent.entity.name, via)
        parent_steps: Steps = None if steps is None else []
        result: Truth
        if parent is None:
            result = False
        elif self.parent.root is None:
            result = True
        else:
            result = self.parent.root.truth(parent, lookup, now, parent_steps) is True
        if steps is not None:
            found = RelatedStep(
                self.parent.entity.name,
                via,
                parent is not None,
                parent_steps[0] if parent_steps else None,
            )
            steps.append(Step("related", result, self.via.name, None, via, related=found))
        return result


@dataclass(frozen=True, slots=True)
class BAnd:
    """Every item holds."""

    items: tuple[BoundNode, ...]

    @classmethod
    def bind(cls, n: And, b: Binder) -> BAnd:
        return cls(tuple(b.node(i) for i in n.items))

    def identity(self) -> Any:
        return ["and", [i.identity() for i in self.items]]

    def tables(self) -> frozenset[str]:
        return frozenset().union(*(i.tables() for i in self.items))

    def reads_clock(self) -> bool:
        return any(i.reads_clock() for i in self.items)

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        inner: Steps = None if steps is None else []
        result = conjunction([i.truth(row, lookup, now, inner) for i in self.items])
        if steps is not None:
            steps.append(Step("and", result, items=tuple(inner or ())))
        return result


@dataclass(frozen=True, slots=True)
class BOr:
    """At least one item holds."""

    items: tuple[BoundNode, ...]

    @classmethod
    def bind(cls, n: Or, b: Binder) -> BOr:
        return cls(tuple(b.node(i) for i in n.items))

    def identity(self) -> Any:
        return ["or", [i.identity() for i in self.items]]

    def tables(self) -> frozenset[str]:
        return frozenset().union(*(i.tables() for i in self.items))

    def reads_clock(self) -> bool:
        return any(i.reads_clock() for i in self.items)

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        inner: Steps = None if steps is None else []
        result = disjunction([i.truth(row, lookup, now, inner) for i in self.items])
        if steps is not None:
            steps.append(Step("or", result, items=tuple(inner or ())))
        return result


@dataclass(frozen=True, slots=True)
class BNot:
    """The item does not hold."""

    item: BoundNode

    @classmethod
    def bind(cls, n: Not, b: Binder) -> BNot:
        return cls(b.node(n.item))

    def identity(self) -> Any:
        return ["not", self.item.identity()]

    def tables(self) -> frozenset[str]:
        return self.item.tables()

    def reads_clock(self) -> bool:
        return self.item.reads_clock()

    def truth(self, row: Row, lookup: Lookup, now: datetime, steps: Steps = None) -> Truth:
        inner: Steps = None if steps is None else []
        result = negate(self.item.truth(row, lookup, now, inner))
        if steps is not None:
            steps.append(Step("not", result, items=tuple(inner or ())))
        return result


#: The closed unions of bound nodes: the binder and the SQL compilers
#: (``syncd.store.filter_sql``) match over them and end in ``assert_never``, so mypy names each
#: place a new kind must be handled.
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
    return BoundTree(e, Binder(model, profile, e, params, user, depth).node(access.node), depth)


class Binder:
    """One entity's filter being bound for one device: the dispatch to each bound class's
    ``bind`` and the coercions they share (claims and literals to a column's type)."""

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
        """``n`` bound by the bound class of its kind."""
        match n:
            case AllRows():
                return BAll.bind(n, self)
            case Compare():
                return BCompare.bind(n, self)
            case InList():
                return BIn.bind(n, self)
            case IsNull():
                return BIsNull.bind(n, self)
            case Between():
                return BBetween.bind(n, self)
            case Within():
                return BWithin.bind(n, self)
            case Related():
                return BRelated.bind(n, self)
            case And():
                return BAnd.bind(n, self)
            case Or():
                return BOr.bind(n, self)
            case Not():
                return BNot.bind(n, self)
            case _:
                assert_never(n)

    def column(self, name: str) -> Column:
        """A column of the entity being bound."""
        return self.entity.column(name)

    def parent(self, entity: str) -> BoundTree:
        """A related parent's own filter, bound for the same device one level deeper."""
        return bind_tree(self.model, self.profile, entity, self.params, self.user, self.depth + 1)

    def raw(self, p: Param) -> object:
        if p.name not in self.params or self.params[p.name] is None:
            raise BindError(f"parameter {p.name!r} has no value for this user")
        return self.params[p.name]

    def scalar(self, col: Column, operand: Literal | Param) -> object:
        """One value for ``col``: a literal, or a single-valued claim."""
        if isinstance(operand, Literal):
            return self.typed(col, operand.value, "value")
        value = self.raw(operand)
        if isinstance(value, list | tuple):
            raise BindError(f"parameter {operand.name!r} is a list, the filter wants one value")
        return self.typed(col, value, operand.name)

    def many(self, col: Column, source: Literal | Param) -> tuple[object, ...]:
        """A set of values for ``col``, sorted: a literal list, or a claim (a list or one)."""
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
        """``value`` coerced to ``col``'s type (BindError naming ``what`` if it cannot be)."""
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
