"""The change feed: the rows a subscription must receive between two checkpoints.

Strategy (decision 1 and 5). A window (C, S] holds the writes of transactions visible in
snapshot S and not in C; every such transaction has an xid in [C.xmin, S.xmax). Each key is
sent once per window, in the state it had at S:

* Upserts come from the entity table itself: the rows whose ``_txid`` is in the window. A row's
  ``_txid`` is its last writer, so this is exactly "the key's last change in the window left a
  row that S sees" (a later writer of the same key waited for the earlier one's row lock, so it
  committed later and is not visible in C either). A key rewritten after S is not visible in S
  and waits for the next window. Pages walk the index (``_txid``, key) with a keyset cursor:
  each page is one ordered index range scan, with no per-row lookup and no re-scan.
* Tombstones come from the change log's deletes in the window (a partial index on the
  ``'d'`` rows): the key's last change in the window is that delete and the row is gone.

The upsert pass sees only current rows, so a row that left a filter (decision 3) is not
visible to it: that needs the old images of the window's updates in the change log, as the
delete pass reads them (``_old_image_column``).

The initial sync (C = None) scans the table keyset-paged by primary key, keeping rows whose
``_txid`` is visible in S, so ``ChangeBatch.last_key`` can resume it (``after``). A filtered
scan whose result spans several pages first asks the (filter column, key) index for page
boundaries, every ``batch_size``-th matching key, in one index-only pass; each page is then a
key range the index reads directly, where plain LIMIT paging would re-read every remaining
matching row (bitmap + sort) or walk the whole primary key (filter on the heap) per page.

Every page is its own short statement on a pooled connection released before the caller sees
the batch; rows come out already in the wire layout (model column order, then ``_version``) with
values cast to primitives in SQL, so Python never touches a value.

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
    asyncpg Records or tuples; deletes are key values in their wire form.

    ``last_key`` is the wire key of the last row of a batch from an initial scan (rows come in
    key order), None for incremental batches: with the stream's snapshot it is where a cut-off
    initial download resumes (``ChangeStream(..., initial_after={entity: last_key})``).
    """

    entity: str
    upserts: Sequence[Sequence[Any]] = ()
    deletes: Sequence[Any] = field(default_factory=list)
    last_key: Any = None


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
    fetch: Fetch,
    sub: Subscription,
    snapshot: Checkpoint,
    batch_size: int,
    *,
    after: Any = None,
) -> AsyncIterator[ChangeBatch]:
    """Rows visible in ``snapshot`` in key order, strictly after the wire key ``after``."""
    e = sub.entity
    k = f"t.{ident(e.key)}"
    key = e.key_column
    params: list[object] = [snapshot.as_pg(), batch_size]
    where = "pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
    if sub.filter is not None:
        where += f" AND ({sub.filter.sql(e, _row_column('t'), params)})"
    select = f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t WHERE {where}"

    def page_sql(lower: bool, upper: bool) -> str:
        n, bounds = len(params), ""
        if lower:
            n += 1
            bounds += f" AND {k} > {from_wire(key, f'${n}')}"
        if upper:
            n += 1
            bounds += f" AND {k} <= {from_wire(key, f'${n}')}"
        return f"{select}{bounds} ORDER BY {k} LIMIT $2"

    key_index = e.key_index
    # Unfiltered, the primary key walk already reads each page as one range: no plan needed.
    planned = sub.filter is None
    ranges: list[Any] = []  # upper bounds of the planned key ranges still to read
    while True:
        upper = ranges[0] if ranges else None
        args = [x for x in (after, upper) if x is not None]
        rows = await fetch(page_sql(after is not None, upper is not None), *params, *args)
        if rows:
            after = rows[-1][key_index]
            yield ChangeBatch(e.name, rows, [], after)
        if len(rows) == batch_size and after != upper:
            if not planned:
                planned = True
                ranges = await _page_bounds(fetch, sub, batch_size, after)
            continue
        if upper is None:
            return
        after = ranges.pop(0)


async def _page_bounds(fetch: Fetch, sub: Subscription, batch_size: int, after: Any) -> list[Any]:
    """Every ``batch_size``-th key matching the filter after ``after``, in key order.

    Visibility is left to the page queries so this stays one index-only scan of the (filter
    column, key) index; rows written since only make a range hold fewer visible rows.
    """
    assert sub.filter is not None
    e, key = sub.entity, sub.entity.key_column
    k = f"t.{ident(e.key)}"
    params: list[object] = [batch_size]
    matches = sub.filter.sql(e, _row_column("t"), params)
    params.append(after)
    sql = (
        f"SELECT k FROM (SELECT {to_wire(key, k)} AS k, row_number() OVER (ORDER BY {k}) AS n"
        f" FROM {ident(e.name)} t WHERE ({matches}) AND {k} > {from_wire(key, f'${len(params)}')}"
        ") b WHERE n % $1 = 0 ORDER BY n"
    )
    return [r[0] for r in await fetch(sql, *params)]


def _window(x: str, p: int) -> str:
    """The xid ``x`` is in the window; parameters $p.. are C.xmin, S.xmax, C, S."""
    return (
        f"{x} >= ${p}::xid8 AND {x} < ${p + 1}::xid8"
        f" AND NOT pg_visible_in_snapshot({x}, ${p + 2}::pg_snapshot)"
        f" AND pg_visible_in_snapshot({x}, ${p + 3}::pg_snapshot)"
    )


async def incremental_pages(
    fetch: Fetch, sub: Subscription, since: Checkpoint, snapshot: Checkpoint, batch_size: int
) -> AsyncIterator[ChangeBatch]:
    async for batch in _window_upserts(fetch, sub, since, snapshot, batch_size):
        yield batch
    async for batch in _window_deletes(fetch, sub, since, snapshot, batch_size):
        yield batch


def _window_params(since: Checkpoint, snapshot: Checkpoint) -> list[object]:
    return [since.xmin, snapshot.xmax, since.as_pg(), snapshot.as_pg()]


async def _window_upserts(
    fetch: Fetch, sub: Subscription, since: Checkpoint, snapshot: Checkpoint, batch_size: int
) -> AsyncIterator[ChangeBatch]:
    """Current rows written in the window, walking the (``_txid``, key) index."""
    e = sub.entity
    k = f"t.{ident(e.key)}"
    params = [*_window_params(since, snapshot), batch_size]  # $1-$4 window, $5 limit
    where = _window("t._txid", 1)
    if sub.filter is not None:
        where += f" AND ({sub.filter.sql(e, _row_column('t'), params)})"
    n = len(params)
    cursor = f"(t._txid, {k}) > (${n + 1}::xid8, {from_wire(e.key_column, f'${n + 2}')})"
    select = f"SELECT {wire_select_list(e, 't')}, t._txid FROM {ident(e.name)} t WHERE {where}"
    order = f"ORDER BY t._txid, {k} LIMIT $5"
    key_index = e.key_index
    rows = await fetch(f"{select} {order}", *params)
    while rows:
        yield ChangeBatch(e.name, [r[:-1] for r in rows], [])
        if len(rows) < batch_size:
            return
        last = rows[-1]
        rows = await fetch(f"{select} AND {cursor} {order}", *params, last[-1], last[key_index])


async def _window_deletes(
    fetch: Fetch, sub: Subscription, since: Checkpoint, snapshot: Checkpoint, batch_size: int
) -> AsyncIterator[ChangeBatch]:
    """Keys whose last change in the window is a delete and whose row is gone."""
    e = sub.entity
    k = ident(e.key)
    params = [e.name, *_window_params(since, snapshot), batch_size]  # $2-$5 window, $6 limit
    old_ok = "true"
    if sub.filter is not None:
        old_ok = sub.filter.sql(e, _old_image_column("c", params), params)
    key_wire = {"integer": "c.key::bigint"}.get(e.key_column.type, "c.key")
    cursor = f"(c.txid, c.seq) > (${len(params) + 1}::xid8, ${len(params) + 2}::bigint)"
    # The OFFSET 0 fences keep both probes per-row index lookups: deletes are few, and a hash
    # join would read the whole window and the whole entity table.
    select = f"""
        SELECT c.txid, c.seq, {key_wire}
        FROM _syncd_changes c
        WHERE c.entity = $1 AND c.op = 'd' AND {_window("c.txid", 2)} AND ({old_ok})
          AND NOT EXISTS (
              SELECT 1 FROM _syncd_changes l
              WHERE l.entity = c.entity AND l.key = c.key AND l.seq > c.seq
                AND {_window("l.txid", 2)}
              OFFSET 0)
          AND NOT EXISTS (
              SELECT 1 FROM {ident(e.name)} r WHERE r.{k} = {from_wire(e.key_column, "c.key")}
              OFFSET 0)"""
    order = "ORDER BY c.txid, c.seq LIMIT $6"
    rows = await fetch(f"{select} {order}", *params)
    while rows:
        yield ChangeBatch(e.name, (), [r[2] for r in rows])
        if len(rows) < batch_size:
            return
        rows = await fetch(f"{select} AND {cursor} {order}", *params, rows[-1][0], rows[-1][1])
