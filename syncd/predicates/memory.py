"""Evaluate a bound filter against one row held in memory, exactly as the SQL would.

Strategy: SQL's three-valued logic is reproduced (``None`` is UNKNOWN; a row is selected only
when the condition is TRUE), including the corner cases of ``IN`` / ``NOT IN`` with nulls
and empty sets, so the in-memory answer and the database's never disagree; a property test
checks that over random rows. Rows are mappings of column name to the Python values asyncpg
returns (UUID, Decimal, aware datetime, date). Related parents and membership sets come from
a ``Lookup`` supplied by the caller (a device-side cache, a test's model of staging).

Tracing: ``trace`` runs the same evaluation and also returns every node it evaluated as a
``Step`` (the node, the row's value, the bound operand and the three-valued result; for a
related filter the parent's key, whether it was found and the parent filter's own trace),
which is how ``syncctl explain`` shows why a row is or is not on a device without a second
evaluator that could disagree with this one. Without a trace the evaluation is unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
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

__all__ = ["Lookup", "Related", "Step", "matches", "trace"]

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


def _shown(value: object) -> object:
    """A value as JSON can show it: JSON scalars as they are, others as their text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | frozenset | set):
        return [_shown(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _shown(v) for k, v in value.items()}
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True, slots=True)
class Related:
    """What a related node looked up: the parent row its ``via`` names, and why it counts."""

    entity: str
    key: object  # the row's via value (None: the row names no parent)
    found: bool
    trace: Step | None  # the parent's own filter, evaluated on the parent row (None: all rows)


@dataclass(frozen=True, slots=True)
class Step:
    """One evaluated node: ``result`` is True, False or None (SQL's unknown)."""

    node: str  # all, and, or, not, compare, in, not_in, member, not_member, is_null, ...
    result: Truth
    column: str | None = None
    op: str | None = None
    row_value: object = None
    operand: object = None  # the bound value(s) the row's value was compared with
    items: tuple[Step, ...] = ()
    related: Related | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "result": self.result}
        if self.column is not None:
            out.update(column=self.column, row_value=_shown(self.row_value))
        if self.op is not None:
            out["op"] = self.op
        if self.operand is not None:
            out["operand"] = _shown(self.operand)
        if self.items:
            out["items"] = [i.to_json() for i in self.items]
        if self.related is not None:
            r = self.related
            out["related"] = {
                "entity": r.entity,
                "key": _shown(r.key),
                "found": r.found,
                "trace": None if r.trace is None else r.trace.to_json(),
            }
        return out


def trace(tree: BoundTree, row: Row, lookup: Lookup, now: datetime | None = None) -> Step | None:
    """``matches``, with the evaluation of every node; None when the tree takes every row."""
    if tree.root is None:
        return None
    steps: list[Step] = []
    _eval(tree.root, row, lookup, now or datetime.now(UTC), steps)
    return steps[0]


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


def _eval(
    n: BoundNode, row: Row, lookup: Lookup, now: datetime, steps: list[Step] | None = None
) -> Truth:
    """The node's truth on ``row``; with ``steps``, its ``Step`` is appended there too."""
    # Children evaluate into their own list, so a traced node holds exactly its children.
    inner: list[Step] | None = None if steps is None else []
    result: Truth
    step: Step | None = None
    match n:
        case BAll():
            result = True
            if steps is not None:
                step = Step("all", result)
        case BAnd():
            results = [_eval(i, row, lookup, now, inner) for i in n.items]
            if any(r is False for r in results):
                result = False
            else:
                result = None if any(r is None for r in results) else True
            if inner is not None:
                step = Step("and", result, items=tuple(inner))
        case BOr():
            results = [_eval(i, row, lookup, now, inner) for i in n.items]
            if any(r is True for r in results):
                result = True
            else:
                result = None if any(r is None for r in results) else False
            if inner is not None:
                step = Step("or", result, items=tuple(inner))
        case BNot():
            result = _not(_eval(n.item, row, lookup, now, inner))
            if inner is not None:
                step = Step("not", result, items=tuple(inner))
        case BRelated():
            via = row.get(n.via.name)
            parent = None if via is None else lookup.row(n.parent.entity.name, via)
            parent_steps: list[Step] | None = None if steps is None else []
            if parent is None:
                result = False
            elif n.parent.root is None:
                result = True
            else:
                result = _eval(n.parent.root, parent, lookup, now, parent_steps) is True
            if steps is not None:
                found = Related(
                    n.parent.entity.name,
                    via,
                    parent is not None,
                    parent_steps[0] if parent_steps else None,
                )
                step = Step("related", result, n.via.name, None, via, related=found)
        case BCompare():
            value = row.get(n.column.name)
            result = _compare(n.op, value, n.value)
            if steps is not None:
                step = Step("compare", result, n.column.name, n.op, value, n.value)
        case BIn():
            value = row.get(n.column.name)
            t = _in(value, n.values)
            result = _not(t) if n.negated else t
            if steps is not None:
                kind = "not_in" if n.negated else "in"
                step = Step(kind, result, n.column.name, kind, value, n.values)
        case BMember():
            value = row.get(n.column.name)
            members = lookup.members(n.membership, n.user)
            t = _in(value, members)
            result = _not(t) if n.negated else t
            if steps is not None:
                kind = "not_member" if n.negated else "member"
                listed = sorted(members, key=repr)
                shown = {"membership": n.membership.name, "user": n.user, "values": listed}
                step = Step(kind, result, n.column.name, kind, value, shown)
        case BIsNull():
            value = row.get(n.column.name)
            result = (value is not None) if n.negated else (value is None)
            if steps is not None:
                kind = "not_null" if n.negated else "is_null"
                step = Step(kind, result, n.column.name, kind, value)
        case BBetween():
            value = row.get(n.column.name)
            low, high = _compare(">=", value, n.low), _compare("<=", value, n.high)
            result = _and(low, high)
            if steps is not None:
                step = Step("between", result, n.column.name, "between", value, (n.low, n.high))
        case BWithin():
            op = ">=" if n.direction == "last" else "<="
            value = row.get(n.column.name)
            bound = cutoff(n, now)
            result = _compare(op, value, bound)
            if steps is not None:
                step = Step("within", result, n.column.name, op, value, bound)
        case _:
            assert_never(n)
    if steps is not None and step is not None:
        steps.append(step)
    return result


def _and(a: Truth, b: Truth) -> Truth:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True
