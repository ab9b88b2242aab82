"""``BoundFilter``: one device's filter for one entity, ready for the feed and for tests.

Strategy: the feed knows filters only through the ``RowPredicate`` protocol
(``sql(entity, column, params) -> str``); this class is that predicate, plus the in-memory
``matches`` and an ``identity`` that is equal exactly when two bound filters select the same
rows (same tree, same bound values). Plans hash the identity, and the live hub groups devices
by it, so users whose filters bind to the same values share one query and one encoding.

``dependencies`` names the other staging tables whose writes can move rows in or out
(related parents, membership tables) and ``time_relative`` says whether the passing of time
can: the feed needs both to widen a window beyond the rows that changed themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, assert_never

from syncd.filters.bound import (
    BAll,
    BAnd,
    BBetween,
    BCompare,
    BIn,
    BindError,
    BIsNull,
    BMember,
    BNot,
    BOr,
    BoundNode,
    BoundTree,
    BRelated,
    BWithin,
    bind_tree,
)
from syncd.filters.memory import Lookup, matches
from syncd.filters.sql import ColumnSql, TableSql, TouchedSql, compile_moved, compile_tree
from syncd.model import ClientModel, Entity, Profile

__all__ = ["BindError", "BoundFilter", "bind_filter"]


@dataclass(frozen=True)
class BoundFilter:
    tree: BoundTree
    now: datetime | None = None
    """A fixed "now" for ``within`` (``at``); None reads the clock at each compile."""

    def at(self, now: datetime) -> BoundFilter:
        """This filter with "now" fixed: what a feed window at wall time ``now`` selects."""
        return replace(self, now=now)

    def sql(self, entity: Entity, column: ColumnSql, params: list[object]) -> str:
        if entity.name != self.tree.entity.name:
            raise ValueError(f"filter of {self.tree.entity.name!r} applied to {entity.name!r}")
        return compile_tree(self.tree, column, params, self.now)

    def sql_at(self, entity: Entity, column: ColumnSql, params: list[object], now: datetime) -> str:
        """As ``sql`` with "now" fixed by the caller (one value per feed window)."""
        if entity.name != self.tree.entity.name:
            raise ValueError(f"filter of {self.tree.entity.name!r} applied to {entity.name!r}")
        return compile_tree(self.tree, column, params, now)

    def sql_sourced(
        self,
        entity: Entity,
        column: ColumnSql,
        params: list[object],
        table: TableSql,
        now: datetime | None = None,
    ) -> str:
        """As ``sql`` with related parents and memberships read from ``table(entity)``."""
        if entity.name != self.tree.entity.name:
            raise ValueError(f"filter of {self.tree.entity.name!r} applied to {entity.name!r}")
        return compile_tree(self.tree, column, params, now or self.now, table)

    def sql_moved(
        self,
        entity: Entity,
        column: ColumnSql,
        params: list[object],
        touched: TouchedSql,
        table: TableSql,
        then: datetime,
        now: datetime,
    ) -> str | None:
        """Rows, unchanged themselves, whose match may differ between ``then`` and ``now``
        (``syncd.filters.sql.compile_moved``); None when none can."""
        if entity.name != self.tree.entity.name:
            raise ValueError(f"filter of {self.tree.entity.name!r} applied to {entity.name!r}")
        return compile_moved(self.tree, column, params, touched, table, then, now)

    def matches(
        self, row: Mapping[str, object], lookup: Lookup, now: datetime | None = None
    ) -> bool:
        return matches(self.tree, row, lookup, now)

    @property
    def identity(self) -> list[Any]:
        return _tree_identity(self.tree)

    @property
    def dependencies(self) -> frozenset[str]:
        return _dependencies(self.tree)

    @property
    def time_relative(self) -> bool:
        return _any_within(self.tree)


def bind_filter(
    model: ClientModel,
    profile: Profile,
    entity: str,
    params: Mapping[str, object],
    user: str,
) -> BoundFilter | None:
    """The bound filter of ``entity`` in ``profile``; None when the profile takes all rows."""
    tree = bind_tree(model, profile, entity, params, user)
    return None if tree.root is None else BoundFilter(tree)


def _nodes(n: BoundNode) -> list[BoundNode]:
    match n:
        case BAnd() | BOr():
            return [n, *(m for i in n.items for m in _nodes(i))]
        case BNot():
            return [n, *_nodes(n.item)]
        case BAll() | BCompare() | BIn() | BMember() | BIsNull() | BBetween() | BWithin():
            return [n]
        case BRelated():
            return [n]  # the parent's filter is a tree of its own
        case _:
            assert_never(n)


def _dependencies(tree: BoundTree) -> frozenset[str]:
    """Other staging tables whose writes can move rows of ``tree``'s entity."""
    if tree.root is None:
        return frozenset()
    out: set[str] = set()
    for n in _nodes(tree.root):
        match n:
            case BMember():
                out.add(n.table.name)
            case BRelated():
                out.add(n.parent.entity.name)
                out |= _dependencies(n.parent)
            case BAll() | BCompare() | BIn() | BIsNull() | BBetween() | BWithin():
                pass  # reads the row itself (and the clock)
            case BAnd() | BOr() | BNot():
                pass  # their items are in the list too
            case _:
                assert_never(n)
    return frozenset(out)


def _any_within(tree: BoundTree) -> bool:
    """Whether the passing of time alone can move rows of ``tree``'s entity."""
    if tree.root is None:
        return False
    for n in _nodes(tree.root):
        match n:
            case BWithin():
                return True
            case BRelated():
                if _any_within(n.parent):
                    return True
            case BAll() | BCompare() | BIn() | BMember() | BIsNull() | BBetween():
                pass
            case BAnd() | BOr() | BNot():
                pass  # their items are in the list too
            case _:
                assert_never(n)
    return False


def _v(value: object) -> Any:
    return value if isinstance(value, bool | int | str) else [type(value).__name__, str(value)]


def _tree_identity(tree: BoundTree) -> list[Any]:
    return [tree.entity.name, None if tree.root is None else _identity(tree.root)]


def _identity(n: BoundNode) -> Any:
    match n:
        case BAll():
            return ["all"]
        case BAnd():
            return ["and", [_identity(i) for i in n.items]]
        case BOr():
            return ["or", [_identity(i) for i in n.items]]
        case BNot():
            return ["not", _identity(n.item)]
        case BRelated():
            return ["related", n.via.name, _tree_identity(n.parent)]
        case BCompare():
            return [n.op, n.column.name, _v(n.value)]
        case BIn():
            return ["not_in" if n.negated else "in", n.column.name, [_v(v) for v in n.values]]
        case BMember():
            op = "not_member" if n.negated else "member"
            return [op, n.column.name, n.membership.name, _v(n.user)]
        case BIsNull():
            return ["not_null" if n.negated else "is_null", n.column.name]
        case BBetween():
            return ["between", n.column.name, _v(n.low), _v(n.high)]
        case BWithin():
            return ["within", n.column.name, n.direction, n.seconds]
        case _:
            assert_never(n)
