"""``BoundFilter``: one device's filter for one entity, ready for the feed and for tests.

Strategy: the feed knows filters only through the ``RowPredicate`` protocol
(``sql(entity, column, params) -> str``); this class is that predicate, plus the in-memory
``matches`` and an ``identity`` that is equal exactly when two bound filters select the same
rows (same tree, same bound values). Plans hash the identity, and the live hub groups devices
by it, so users whose filters bind to the same values share one query and one encoding.

``dependencies`` names the other staging tables whose writes can move rows in or out
(related parents, membership tables) and ``time_relative`` says whether the passing of time
can: the feed needs both to widen a window beyond the rows that changed themselves. Each bound
node answers these three questions of itself (``syncd.predicates.bound``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from syncd.model import ClientModel, Entity, Profile
from syncd.predicates.bound import BindError, BoundTree, bind_tree
from syncd.predicates.memory import Lookup, matches
from syncd.store.filter_sql import ColumnSql, TableSql, TouchedSql, compile_moved, compile_tree

__all__ = ["BindError", "BoundFilter", "bind_filter"]


@dataclass(frozen=True)
class BoundFilter:
    """One device's filter for one entity: SQL for the feed, an in-memory predicate, an identity."""

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
        (``syncd.store.filter_sql.compile_moved``); None when none can."""
        if entity.name != self.tree.entity.name:
            raise ValueError(f"filter of {self.tree.entity.name!r} applied to {entity.name!r}")
        return compile_moved(self.tree, column, params, touched, table, then, now)

    def matches(
        self, row: Mapping[str, object], lookup: Lookup, now: datetime | None = None
    ) -> bool:
        return matches(self.tree, row, lookup, now)

    @property
    def identity(self) -> list[Any]:
        return self.tree.identity()

    @property
    def dependencies(self) -> frozenset[str]:
        return self.tree.tables()

    @property
    def time_relative(self) -> bool:
        return self.tree.reads_clock()


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
