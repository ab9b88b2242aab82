"""How big an org's staging tables are, cheaply: what ``syncctl model plan`` prices.

Strategy. A plan is a question asked before a push, so it must not scan tables: rows come
from PostgreSQL's own estimate (``pg_class.reltuples``, kept by autovacuum and ANALYZE) and
bytes from the table's size on disk (``pg_table_size``, heap and TOAST). A table never
analyzed has no estimate (reltuples -1): it is counted exactly, which is cheap for the small
fresh tables where that happens. Each figure says which source it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from syncd.store.sql import ident

__all__ = ["TableEstimate", "table_estimates"]


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
