"""The change feed: the rows a subscription must receive between two checkpoints.

Strategy (decision 1 and 5). A window (C, S] holds the change-log rows whose transaction is
visible in snapshot S and not in C: a range scan on (entity, txid, seq) plus two visibility
tests. Each key is handled once per window, at its last change (highest ``seq``, which is the
commit order of that key's writers), by reading the key's *current* row:

* the row exists and was written by a transaction visible in S -> upsert (this is its state at S);
* the row is gone and the key's last change in the window is a delete -> tombstone;
* otherwise a transaction after S touched the key -> skip: a later window carries it.

The initial sync (C = None) scans the table itself, keyset-paged by primary key, keeping rows
whose ``_txid`` is visible in S. Every page is its own short statement on a pooled connection
released before the caller sees the batch; rows come out already in the wire layout (model
column order, then ``_version``) with values cast to primitives in SQL.

Filters plug in as ``RowPredicate``: anything that writes a parameterized SQL condition given
how to spell a column. ``RowFilter`` is the minimal conjunction of ``=`` / ``IN`` terms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from syncd.model import Column, Entity
from syncd.store.checkpoint import Checkpoint
from syncd.store.sql import SQL_TYPES, from_wire, ident, to_wire

__all__ = [
    "ChangeBatch",
    "FilterTerm",
    "RowFilter",
    "RowPredicate",
    "Subscription",
    "incremental_pages",
    "initial_pages",
    "wire_select_list",
]

# Spells a column as an SQL expression of the row source being filtered.
ColumnSql = Callable[[Column], str]


class RowPredicate(Protocol):
    """A filter compiled to SQL: appends its values to ``params`` and returns a condition."""

    def sql(self, entity: Entity, column: ColumnSql, params: list[object]) -> str: ...


@dataclass(frozen=True, slots=True)
class FilterTerm:
    column: str
    op: Literal["=", "IN"]
    value: object


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A conjunction of ``column = value`` / ``column IN values`` terms."""

    terms: tuple[FilterTerm, ...]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], params: Mapping[str, object]) -> RowFilter:
        """The minimal filter JSON ``{"column", "op", "param"}`` with its parameter bound."""
        column, op, param = spec.get("column"), spec.get("op"), spec.get("param")
        if not isinstance(column, str) or op not in ("=", "IN") or not isinstance(param, str):
            raise ValueError(f"unsupported filter {dict(spec)!r}")
        if param not in params:
            raise ValueError(f"filter parameter {param!r} is not bound")
        return cls((FilterTerm(column, op, params[param]),))

    def sql(self, entity: Entity, column: ColumnSql, params: list[object]) -> str:
        parts = []
        for term in self.terms:
            col = entity.column(term.column)  # KeyError for a column the entity lacks
            lhs = column(col)  # may add parameters of its own: call before numbering ours
            params.append(term.value)
            if term.op == "=":
                parts.append(f"{lhs} = ${len(params)}::{SQL_TYPES[col.type]}")
            elif term.op == "IN":
                parts.append(f"{lhs} = ANY(${len(params)}::{SQL_TYPES[col.type]}[])")
            else:
                raise ValueError(f"unsupported filter op {term.op!r}")
        return " AND ".join(parts) if parts else "true"


@dataclass(frozen=True, slots=True)
class Subscription:
    """One entity a device receives, optionally restricted by a compiled filter."""

    entity: Entity
    filter: RowPredicate | None = None


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Upserts are wire rows (values in model column order, then ``_version``), given as
    asyncpg Records or tuples; deletes are key values in their wire form."""

    entity: str
    upserts: Sequence[Sequence[Any]] = ()
    deletes: Sequence[Any] = field(default_factory=list)


def wire_select_list(entity: Entity, alias: str) -> str:
    cols = [to_wire(c, f"{alias}.{ident(c.name)}") for c in entity.columns]
    return ", ".join([*cols, f"{alias}._version"])


def _row_column(alias: str) -> ColumnSql:
    return lambda c: f"{alias}.{ident(c.name)}"


def _old_image_column(alias: str, params: list[object]) -> ColumnSql:
    def column(c: Column) -> str:
        # The jsonb key is the column name passed as a value: no SQL text from names here.
        params.append(c.name)
        return f"({alias}.old->>${len(params)}::text)::{SQL_TYPES[c.type]}"

    return column


# Fetch is a coroutine taking SQL and parameters, run on a connection acquired for this page
# only (decision 5): the caller owns the pool and the retry policy.
Fetch = Callable[..., Any]


async def initial_pages(
    fetch: Fetch, sub: Subscription, snapshot: Checkpoint, batch_size: int
) -> AsyncIterator[ChangeBatch]:
    e = sub.entity
    key = e.key_column
    base: list[object] = [snapshot.as_pg(), batch_size]
    where = "pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
    if sub.filter is not None:
        where += f" AND ({sub.filter.sql(e, _row_column('t'), base)})"
    cursor_param = len(base) + 1
    select = f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t WHERE {where}"
    order = f"ORDER BY t.{ident(key.name)} LIMIT $2"
    first_sql = f"{select} {order}"
    next_sql = f"{select} AND t.{ident(key.name)} > {from_wire(key, f'${cursor_param}')} {order}"
    key_index = e.key_index
    rows = await fetch(first_sql, *base)
    while rows:
        yield ChangeBatch(e.name, rows, [])
        if len(rows) < batch_size:
            return
        rows = await fetch(next_sql, *base, rows[-1][key_index])


async def incremental_pages(
    fetch: Fetch, sub: Subscription, since: Checkpoint, snapshot: Checkpoint, batch_size: int
) -> AsyncIterator[ChangeBatch]:
    e = sub.entity
    key = e.key_column
    # $1 entity, $2 C.xmin, $3 S.xmax, $4 C, $5 S, $6/$7 cursor (txid, seq), $8 limit
    params: list[object] = [e.name, since.xmin, snapshot.xmax, since.as_pg(), snapshot.as_pg()]
    params += [0, 0, batch_size]
    in_window = (
        "{a}.txid >= $2::xid8 AND {a}.txid < $3::xid8"
        " AND NOT pg_visible_in_snapshot({a}.txid, $4::pg_snapshot)"
        " AND pg_visible_in_snapshot({a}.txid, $5::pg_snapshot)"
    )
    row_ok = old_ok = "true"
    if sub.filter is not None:
        row_ok = sub.filter.sql(e, _row_column("t"), params)
        old_ok = sub.filter.sql(e, _old_image_column("p", params), params)
    k = ident(key.name)
    key_wire = {"integer": "p.key::bigint"}.get(key.type, "p.key")
    # Both OFFSET 0 fences keep PostgreSQL from turning the per-change lookups into hash
    # joins, which would read the whole window and the whole entity table on every page.
    sql = f"""
        WITH p AS (
            SELECT c.txid, c.seq, c.key, c.op, c.old
            FROM _syncd_changes c
            WHERE c.entity = $1 AND {in_window.format(a="c")}
              AND (c.txid, c.seq) > ($6::xid8, $7::bigint)
              AND NOT EXISTS (
                  SELECT 1 FROM _syncd_changes l
                  WHERE l.entity = c.entity AND l.key = c.key AND l.seq > c.seq
                    AND {in_window.format(a="l")}
                  OFFSET 0)
            ORDER BY c.txid, c.seq
            LIMIT $8)
        SELECT p.txid, p.seq,
               CASE WHEN t.{k} IS NOT NULL
                         AND pg_visible_in_snapshot(t._txid, $5::pg_snapshot)
                         AND ({row_ok}) THEN 1
                    WHEN t.{k} IS NULL AND p.op = 'd' AND ({old_ok}) THEN 2
                    ELSE 0 END,
               {wire_select_list(e, "t")}, {key_wire}
        FROM p LEFT JOIN LATERAL (
            SELECT * FROM {ident(e.name)} r WHERE r.{k} = {from_wire(key, "p.key")} OFFSET 0
        ) t ON true
        ORDER BY p.txid, p.seq
    """
    while True:
        rows = await fetch(sql, *params)
        upserts: list[tuple[Any, ...]] = []
        deletes: list[Any] = []
        for r in rows:
            kind = r[2]
            if kind == 1:
                upserts.append(r[3:-1])
            elif kind == 2:
                deletes.append(r[-1])
        if upserts or deletes:
            yield ChangeBatch(e.name, upserts, deletes)
        if len(rows) < batch_size:
            return
        params[5], params[6] = rows[-1][0], rows[-1][1]
