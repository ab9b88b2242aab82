"""Evaluate a bound filter against one row held in memory, exactly as the SQL would.

Strategy: SQL's three-valued logic is reproduced (``None`` is UNKNOWN; a row is selected only
when the condition is TRUE), including the corner cases of ``IN`` / ``NOT IN`` with nulls
and empty sets, so the in-memory answer and the database's never disagree; a property test
checks that over random rows. Rows are mappings of column name to the Python values asyncpg
returns (UUID, Decimal, aware datetime, date). Related parents and membership sets come from
a ``Lookup`` supplied by the caller (a device-side cache, a test's model of staging).

Each bound node evaluates itself (``truth`` in ``syncd.predicates.bound``) with the
three-valued helpers below; this module holds what they share and the two entry points.

Tracing: ``trace`` runs the same evaluation and also returns every node it evaluated as a
``Step`` (the node, the row's value, the bound operand and the three-valued result; for a
related filter the parent's key, whether it was found and the parent filter's own trace),
which is how ``syncctl explain`` shows why a row is or is not on a device without a second
evaluator that could disagree with this one. Without a trace the evaluation is unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from syncd.model import MembershipSpec

if TYPE_CHECKING:  # bound.py evaluates with the helpers below, so it imports this module
    from syncd.predicates.bound import BoundTree

__all__ = [
    "Lookup",
    "Related",
    "Row",
    "Step",
    "Steps",
    "Truth",
    "compare",
    "conjunction",
    "disjunction",
    "is_in",
    "matches",
    "negate",
    "trace",
]

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
    return tree.root.truth(row, lookup, now or datetime.now(UTC)) is True


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


#: Where a node being traced appends its ``Step`` (None: not tracing). A node evaluates its
#: children into a list of their own, so its step holds exactly its children's.
Steps = list[Step] | None


def trace(tree: BoundTree, row: Row, lookup: Lookup, now: datetime | None = None) -> Step | None:
    """``matches``, with the evaluation of every node; None when the tree takes every row."""
    if tree.root is None:
        return None
    steps: list[Step] = []
    tree.root.truth(row, lookup, now or datetime.now(UTC), steps)
    return steps[0]


def is_in(value: object, candidates: Collection[object]) -> Truth:
    """SQL's ``value IN (candidates)``: false for an empty set, unknown for a null value or
    when a null candidate might have matched."""
    if not candidates:
        return False
    if value is None:
        return None
    if value in candidates:
        return True
    return None if None in candidates else False


def negate(t: Truth) -> Truth:
    """SQL's NOT: unknown stays unknown."""
    return None if t is None else not t


def conjunction(truths: Iterable[Truth]) -> Truth:
    """SQL's AND over all of ``truths``: false wins over unknown."""
    results = list(truths)
    if any(r is False for r in results):
        return False
    return None if any(r is None for r in results) else True


def disjunction(truths: Iterable[Truth]) -> Truth:
    """SQL's OR over all of ``truths``: true wins over unknown."""
    results = list(truths)
    if any(r is True for r in results):
        return True
    return None if any(r is None for r in results) else False


def compare(op: str, a: object, b: object) -> Truth:
    """SQL's ``a op b`` for two values of one column's type; unknown if either is null."""
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
