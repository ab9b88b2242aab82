"""Evaluate a bound filter against one row held in memory, exactly as the SQL would.

Strategy: SQL's three-valued logic is reproduced (``None`` is UNKNOWN; a row is selected only
when the condition is TRUE), including the corner cases of ``IN`` / ``NOT IN`` with nulls
and empty sets, so the in-memory answer and the database's never disagree; a property test
checks that over random rows. Rows are mappings of column name to the Python values asyncpg
returns (UUID, Decimal, aware datetime, date). Related parents and membership sets come from
a ``Lookup`` supplied by the caller (a device-side cache, a test's model of staging).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, assert_never

from syncd.model import MembershipSpec
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
    cutoff,
)

__all__ = ["Lookup", "matches"]

Row = Mapping[str, object]
Truth = bool | None


class Lookup(Protocol):
    """The rows a bound filter may read besides the row itself: related parents, memberships."""

    def row(self, entity: str, key: object) -> Row | None:
        """The current row of ``entity`` with key ``key``, or None."""
        ...

    def members(self, membership: MembershipSpec, user: object) -> Collection[object]:
        """The ``value`` column of the membership rows whose ``user`` column equals ``user``."""
        ...


def matches(tree: BoundTree, row: Row, lookup: Lookup, now: datetime | None = None) -> bool:
    """Whether ``row`` is in ``tree``'s rows at ``now``, by the same three-valued logic as SQL."""
    if tree.root is None:
        return True
    return _eval(tree.root, row, lookup, now or datetime.now(UTC)) is True


def _in(value: object, candidates: Collection[object]) -> Truth:
    if not candidates:
        return False
    if value is None:
        return None
    if value in candidates:
        return True
    return None if None in candidates else False


def _not(t: Truth) -> Truth:
    return None if t is None else not t


def _compare(op: str, a: object, b: object) -> Truth:
    if a is None or b is None:
        return None
    # Same Python type by construction (both bound to the column's type).
    x: Any = a
    y: Any = b
    if op == "=":
        return bool(x == y)
    if op == "!=":
        return bool(x != y)
    if op == "<":
        return bool(x < y)
    if op == "<=":
        return bool(x <= y)
    if op == ">":
        return bool(x > y)
    return bool(x >= y)


def _eval(n: BoundNode, row: Row, lookup: Lookup, now: datetime) -> Truth:
    match n:
        case BAll():
            return True
        case BAnd():
            results = [_eval(i, row, lookup, now) for i in n.items]
            if any(r is False for r in results):
                return False
            return None if any(r is None for r in results) else True
        case BOr():
            results = [_eval(i, row, lookup, now) for i in n.items]
            if any(r is True for r in results):
                return True
            return None if any(r is None for r in results) else False
        case BNot():
            return _not(_eval(n.item, row, lookup, now))
        case BRelated():
            via = row.get(n.via.name)
            if via is None:
                return False
            parent = lookup.row(n.parent.entity.name, via)
            return parent is not None and matches(n.parent, parent, lookup, now)
        case BCompare():
            return _compare(n.op, row.get(n.column.name), n.value)
        case BIn():
            t = _in(row.get(n.column.name), n.values)
            return _not(t) if n.negated else t
        case BMember():
            t = _in(row.get(n.column.name), lookup.members(n.membership, n.user))
            return _not(t) if n.negated else t
        case BIsNull():
            value = row.get(n.column.name)
            return (value is not None) if n.negated else (value is None)
        case BBetween():
            value = row.get(n.column.name)
            low, high = _compare(">=", value, n.low), _compare("<=", value, n.high)
            return _and(low, high)
        case BWithin():
            op = ">=" if n.direction == "last" else "<="
            return _compare(op, row.get(n.column.name), cutoff(n, now))
        case _:
            assert_never(n)


def _and(a: Truth, b: Truth) -> Truth:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True
