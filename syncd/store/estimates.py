"""How big an org's staging tables are, cheaply: what ``syncctl model plan`` prices.

Strategy. A plan is a question asked before a push, so it must not scan tables: rows come
from PostgreSQL's own estimate (``pg_class.reltuples``, kept by autovacuum and ANALYZE) and
bytes from the table's size on disk (``pg_table_size``, heap and TOAST). A table never
analyzed has no estimate (reltuples -1): it is counted exactly, which is cheap for the small
fresh tables where that happens. Each figure says which source it came from.
``filtered_size`` counts what one device's bound filter selects, when the caller can bind it
(a filter that reads only the user id, memberships and literals).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from syncd.model import Entity
from syncd.store.feed import RowPredicate
from syncd.store.sql import ident

__all__ = ["TableEstimate", "filtered_size", "table_estimates"]


@dataclass(frozen=True, slots=True)
class TableEstimate:
    rows: int
    bytes: int
    source: str  # "pg_class" (the planner's estimate) or "count" (counted exactly)


async def table_estimates(pool: asyncpg.Pool, tables: Sequence[str]) -> dict[str, TableEstimate]:
    """Estimates for the tables that exist among ``tables`` (model entity names)."""
    rows = await pool.fetch(
        "SELECT c.relname, c.reltuples::float8, pg_table_size(c.oid)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY($1::text[])",
        list(tables),
    )
    out: dict[str, TableEstimate] = {}
    for name, reltuples, size in rows:
        if reltuples < 0:
            # The names are the model's entities (validated identifiers), quoted.
            counted = await pool.fetchval(f"SELECT count(*) FROM {ident(name)}")
            out[name] = TableEstimate(int(counted), int(size), "count")
        else:
            out[name] = TableEstimate(int(reltuples), int(size), "pg_class")
    return out


async def filtered_size(
    pool: asyncpg.Pool, entity: Entity, predicate: RowPredicate | None
) -> tuple[int, int]:
    """Rows of ``entity`` one device's filter selects, and their size in bytes (PostgreSQL's
    ``pg_column_size`` of each row: close to what the rows weigh, not the wire's bytes)."""
    params: list[object] = []
    condition = (
        "true"
        if predicate is None
        else predicate.sql(entity, lambda c: f"t.{ident(c.name)}", params)
    )
    row = await pool.fetchrow(
        f"SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0)::int8"
        f" FROM {ident(entity.name)} t WHERE coalesce(({condition}), false)",
        *params,
    )
    assert row is not None
    return int(row[0]), int(row[1])
