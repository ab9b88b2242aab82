"""Compile a bound filter to a parameterized SQL condition.

Strategy (project security rule): the SQL text comes only from the fixed templates below,
from identifiers of the parsed model quoted by ``syncd.store.sql.ident``, and from the fixed
type table ``SQL_TYPES``; every value (literals, claims, the user id, "now") is appended to
``params`` and referenced as ``$n`` with an explicit cast. The caller says how to spell a
column of the filtered row (``t."col"`` for the current row, ``(c.old->>$n)::type`` for a
change's before-image), which is how the feed evaluates one filter against both states.

Related parents and memberships are subqueries against staging tables, aliased by chain
depth (``_r1`` .. ``_r3``, ``_m0`` ..) so nested levels never collide. By default they read
the current tables; a ``TableSql`` lets the caller substitute another row source per table
(the feed's "table as of snapshot X", built from current rows and change-log before-images),
which is how one filter is evaluated as of a device's old and new checkpoints. Text ordering
uses ``COLLATE "C"`` so SQL and the in-memory predicate order strings the same way.

``compile_moved`` writes the other question the feed asks: which rows that did not change
themselves may still have changed their match between two checkpoints (time crossed a
``within`` bound, a membership or a parent changed). It narrows the feed's moves pass from
the whole entity to the rows that join what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import assert_never

from syncd.model import Column, Entity
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
    BoundLeaf,
    BoundNode,
    BoundTree,
    BRelated,
    BWithin,
    cutoff,
)
from syncd.store.coltypes import SQL_COLUMN_TYPES
from syncd.store.sql import SQL_TYPES, ident

__all__ = ["ColumnSql", "TableSql", "TouchedSql", "compile_moved", "compile_tree"]

ColumnSql = Callable[[Column], str]
# Spells a staging table as a FROM item; may append parameters of its own.
TableSql = Callable[[Entity, list[object]], str]


def _current_table(entity: Entity, _params: list[object]) -> str:
    return ident(entity.name)


def compile_tree(
    tree: BoundTree,
    column: ColumnSql,
    params: list[object],
    now: datetime | None = None,
    table: TableSql | None = None,
) -> str:
    """The condition for ``tree``'s entity; "true" when it selects every row."""
    if tree.root is None:
        return "true"
    return _Compiler(tree, column, params, now or datetime.now(UTC), table or _current_table).node(
        tree.root
    )


class _Compiler:
    def __init__(
        self,
        tree: BoundTree,
        column: ColumnSql,
        params: list[object],
        now: datetime,
        table: TableSql,
    ) -> None:
        self.tree, self.column, self.params, self.now = tree, column, params, now
        self.table = table
        self.memberships = 0

    def bind(self, value: object, col: Column, array: bool = False) -> str:
        self.params.append(value)
        return f"${len(self.params)}::{SQL_TYPES[col.type]}{'[]' if array else ''}"

    def collate(self, col: Column) -> str:
        return SQL_COLUMN_TYPES[col.type].collate

    def node(self, n: BoundNode) -> str:
        # A column expression may append parameters of its own: each leaf spells its column
        # (``self.column``) before binding its values.
        match n:
            case BAll():
                return "true"
            case BAnd():
                return "(" + " AND ".join(self.node(i) for i in n.items) + ")"
            case BOr():
                return "(" + " OR ".join(self.node(i) for i in n.items) + ")"
            case BNot():
                return f"(NOT {self.node(n.item)})"
            case BRelated():
                return self.related(n)
            case BCompare():
                lhs = self.column(n.column)
                op = "<>" if n.op == "!=" else n.op
                collate = self.collate(n.column) if op not in ("=", "<>") else ""
                return f"({lhs}{collate} {op} {self.bind(n.value, n.column)})"
            case BIn():
                lhs = self.column(n.column)
                test = f"{lhs} = ANY({self.bind(list(n.values), n.column, array=True)})"
                return f"(NOT ({test}))" if n.negated else f"({test})"
            case BMember():
                return self.member(self.column(n.column), n)
            case BIsNull():
                lhs = self.column(n.column)
                return f"({lhs} IS {'NOT ' if n.negated else ''}NULL)"
            case BBetween():
                lhs = self.column(n.column)
                c = self.collate(n.column)
                low, high = self.bind(n.low, n.column), self.bind(n.high, n.column)
                return f"({lhs}{c} BETWEEN {low} AND {high})"
            case BWithin():
                lhs = self.column(n.column)
                op = ">=" if n.direction == "last" else "<="
                return f"({lhs} {op} {self.bind(cutoff(n, self.now), n.column)})"
            case _:
                assert_never(n)

    def member(self, lhs: str, n: BMember) -> str:
        alias = f"_m{self.tree.depth}_{self.memberships}"
        self.memberships += 1
        user = self.bind(n.user, n.table.column(n.membership.user))
        sub = (
            f"SELECT {alias}.{ident(n.membership.value)} FROM {self.table(n.table, self.params)}"
            f" {alias}"
            f" WHERE {alias}.{ident(n.membership.user)} = {user}"
        )
        return f"({lhs} {'NOT IN' if n.negated else 'IN'} ({sub}))"

    def related(self, n: BRelated) -> str:
        parent = n.parent
        alias = f"_r{parent.depth}"
        lhs = self.column(n.via)
        key = f"{alias}.{ident(parent.entity.key)}"
        inner = compile_tree(
            parent, lambda c: f"{alias}.{ident(c.name)}", self.params, self.now, self.table
        )
        return (
            f"EXISTS (SELECT 1 FROM {self.table(parent.entity, self.params)} {alias}"
            f" WHERE {key} = {lhs} AND {inner})"
        )


# Spells the values ``column`` of ``entity`` held, at C or at S, in rows written in the window:
# a one-column subquery (appending its parameters).
TouchedSql = Callable[[Entity, Column, list[object]], str]


def compile_moved(
    tree: BoundTree,
    column: ColumnSql,
    params: list[object],
    touched: TouchedSql,
    table: TableSql,
    then: datetime,
    now: datetime,
) -> str | None:
    """A condition true for every row, unchanged itself, whose match may differ between
    C (``then``) and S (``now``); None when no such row can exist.

    A row that did not change can only change its match through a leaf whose truth moves
    without it: a ``within`` bound that time carried past the row's date, a membership whose
    set gained or lost the row's value, a related parent that changed (or whose own match
    moved). The condition is the OR of those leaves' reasons, so it may select rows whose
    match did not change (the caller compares both states exactly) but never misses one.
    """
    reasons: list[str] = []
    for n in _leaves(tree.root) if tree.root is not None else ():
        match n:
            case BWithin():
                if then == now:
                    continue
                edges = sorted([cutoff(n, then), cutoff(n, now)])  # type: ignore[type-var]
                low, high = (_bind(params, e, n.column) for e in edges)
                reasons.append(f"({column(n.column)} BETWEEN {low} AND {high})")
            case BMember():
                lhs = column(n.column)
                values = touched(n.table, n.table.column(n.membership.value), params)
                # A null value, or a null in the set, makes IN unknown rather than false,
                # which a surrounding NOT turns into a difference: such rows are candidates.
                reasons.append(
                    f"({lhs} IN ({values}) OR {lhs} IS NULL"
                    f" OR EXISTS (SELECT 1 FROM ({values}) _n(v) WHERE _n.v IS NULL))"
                )
            case BRelated():
                parent = n.parent
                lhs = column(n.via)
                keys = touched(parent.entity, parent.entity.key_column, params)
                reason = f"{lhs} IN ({keys})"
                alias = f"_v{parent.depth}"
                inner = compile_moved(
                    parent, _alias_column(alias), params, touched, table, then, now
                )
                if inner is not None:
                    key = f"{alias}.{ident(parent.entity.key)}"
                    reason += (
                        f" OR EXISTS (SELECT 1 FROM {table(parent.entity, params)} {alias}"
                        f" WHERE {key} = {lhs} AND ({inner}))"
                    )
                reasons.append(f"({reason})")
            case BAll() | BCompare() | BIn() | BIsNull() | BBetween():
                pass  # true or false by the row's own values: they move only when it changes
            case _:
                assert_never(n)
    return " OR ".join(reasons) if reasons else None


def _alias_column(alias: str) -> ColumnSql:
    return lambda c: f"{alias}.{ident(c.name)}"


def _bind(params: list[object], value: object, col: Column) -> str:
    params.append(value)
    return f"${len(params)}::{SQL_TYPES[col.type]}"


def _leaves(n: BoundNode) -> list[BoundLeaf]:
    match n:
        case BAnd() | BOr():
            return [leaf for i in n.items for leaf in _leaves(i)]
        case BNot():
            return _leaves(n.item)
        case BAll() | BCompare() | BIn() | BMember() | BIsNull() | BBetween() | BWithin():
            return [n]
        case BRelated():
            return [n]  # a leaf of this tree: the parent's filter is a tree of its own
        case _:
            assert_never(n)
