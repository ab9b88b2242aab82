"""Initial downloads: every row of a subscription visible in a snapshot, page by page.

The initial sync (C = None) scans the table keyset-paged by primary key, keeping rows whose
``_txid`` is visible in S, so ``ChangeBatch.last_key`` can resume it (``after``). A filtered
scan first asks the (filter column, key) index for page boundaries, every ``batch_size``-th
matching key, in one index-only pass; each page is then a key range the index reads directly,
where plain LIMIT paging would re-read every remaining matching row (bitmap + sort) or walk the
whole primary key (filter on the heap) per page. Initial scans read one page ahead: the next
statement runs while the caller encodes and sends the current page (issue 4: the two used to
take turns, each idle half the time).

Every page is its own short statement on a pooled connection; a page read ahead holds a
connection only while its own statement runs, never while the caller waits on a device.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Any

from syncd.store.feed import (
    ChangeBatch,
    Fetch,
    Subscription,
    filter_sql,
    row_column,
    wire_select_list,
)
from syncd.store.snapshot import Snapshot
from syncd.store.sql import from_wire, ident, to_wire

__all__ = ["initial_pages"]


async def initial_pages(
    fetch: Fetch,
    sub: Subscription,
    snapshot: Snapshot,
    batch_size: int,
    *,
    after: Any = None,
) -> AsyncGenerator[ChangeBatch, None]:
    """Rows visible in ``snapshot`` in key order, strictly after the wire key ``after``.

    Read-ahead: while the caller holds a page (encodes and sends it), the statement of the next
    page is already running, so PostgreSQL and the daemon work at the same time instead of in
    turns; at most two pages are held at once (three while a planned range that grew past its
    bound is finished). Unfiltered, the next page starts where this one ended. Filtered, a
    result of one page is read whole in one statement; a bigger one is planned first
    (``_page_bounds``), then every range is known and read one ahead (a first page by LIMIT
    walked the primary key or read every matching row, and cost more than the plan).
    """
    e = sub.entity
    k = f"t.{ident(e.key)}"
    key = e.key_column
    params: list[object] = [snapshot.as_pg(), batch_size]
    where = "pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
    if sub.filter is not None:
        where += f" AND ({filter_sql(sub, row_column('t'), params, snapshot)})"
    select = f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t WHERE {where}"

    def page(lower: Any, upper: Any) -> _Page:
        """Start reading the rows after ``lower`` up to ``upper`` (inclusive)."""
        bounds, args = "", []
        for value, op in ((lower, ">"), (upper, "<=")):
            if value is not None:
                args.append(value)
                bounds += f" AND {k} {op} {from_wire(key, f'${len(params) + len(args)}')}"
        sql = f"{select}{bounds} ORDER BY {k} LIMIT $2"
        return _Page(_started(fetch(sql, *params, *args)), upper)

    key_index = e.key_index
    ranges: deque[tuple[Any, Any]] = deque([(after, None)])  # (lower, upper) not started yet
    if sub.filter is not None:
        # The whole result if it fits one page, else the plan: small filters (one owner's
        # rows) cost one round trip; running the plan beside it cost as much as waiting for it
        # on two cores, and a big result pays only a probe of one page of index keys.
        rows = await _whole_if_one_page(fetch, sub, snapshot, select, params, after)
        if rows:
            yield ChangeBatch(e.name, rows, [], rows[-1][key_index])
            return
        bounds = await _page_bounds(fetch, sub, snapshot, batch_size, after)
        ranges = deque(zip([after, *bounds], [*bounds, None], strict=True))
    ahead: deque[_Page] = deque()
    try:
        while ahead or ranges:
            while ranges and len(ahead) < 2:
                ahead.append(page(*ranges.popleft()))
            current = ahead.popleft()
            rows = await current.rows
            if not rows:
                continue
            last = rows[-1][key_index]
            if len(rows) == batch_size and last != current.upper:
                ahead.appendleft(page(last, current.upper))  # the range goes on
            # One turn of the loop puts the next statement on the wire before the caller's
            # encoding, which does not await, would hold it back.
            await asyncio.sleep(0)
            yield ChangeBatch(e.name, rows, [], last)
    finally:
        await _abandon([p.rows for p in ahead])


@dataclass(frozen=True, slots=True)
class _Page:
    """A page statement in flight and the upper bound of the key range it reads."""

    rows: asyncio.Future[list[Any]]
    upper: Any


def _started(fetch: Awaitable[list[Any]]) -> asyncio.Future[list[Any]]:
    """Run ``fetch`` now; a page nobody waits for any more never logs an unread exception."""
    future = asyncio.ensure_future(fetch)
    future.add_done_callback(_read_outcome)
    return future


def _read_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _abandon(futures: list[asyncio.Future[Any]]) -> None:
    """Stop statements the consumer no longer wants, and wait until each has let go of its
    connection, so a stopped scan leaves the pool as it found it."""
    pending = [f for f in futures if not f.done()]
    for future in pending:
        future.cancel()
    if pending:
        await asyncio.wait(pending)


async def _whole_if_one_page(
    fetch: Fetch,
    sub: Subscription,
    snapshot: Snapshot,
    select: str,
    params: list[object],
    after: Any,
) -> list[Any]:
    """The page of every row ``select`` matches after ``after`` when at most a page of keys
    match the filter; no rows otherwise.

    The gate is a count that stops at ``batch_size`` (``$2``) + 1 entries of the (filter
    column, key) index and does not depend on the row: PostgreSQL evaluates it once, first,
    and skips the whole scan when it fails, so a big result costs a probe of one page of keys.
    """
    e, key = sub.entity, sub.entity.key_column
    params = list(params)  # the gate's own filter values follow the page's
    k, g = f"t.{ident(e.key)}", f"g.{ident(e.key)}"
    matches = filter_sql(sub, row_column("g"), params, snapshot)
    bound = gate_bound = ""
    if after is not None:
        params.append(after)
        bound = f" AND {k} > {from_wire(key, f'${len(params)}')}"
        gate_bound = f" AND {g} > {from_wire(key, f'${len(params)}')}"
    sql = (
        f"{select}{bound} AND (SELECT count(*) FROM (SELECT FROM {ident(e.name)} g"
        f" WHERE ({matches}){gate_bound} LIMIT $2 + 1) c) <= $2 ORDER BY {k} LIMIT $2"
    )
    rows: list[Any] = await fetch(sql, *params)
    return rows


async def _page_bounds(
    fetch: Fetch, sub: Subscription, snapshot: Snapshot, batch_size: int, after: Any
) -> list[Any]:
    """Every ``batch_size``-th key matching the filter after ``after``, in key order.

    Visibility is left to the page queries so this stays one index-only scan of the (filter
    column, key) index; rows written since only make a range hold fewer visible rows.
    """
    assert sub.filter is not None
    e, key = sub.entity, sub.entity.key_column
    k = f"t.{ident(e.key)}"
    params: list[object] = [batch_size]
    where = filter_sql(sub, row_column("t"), params, snapshot)
    if after is not None:
        params.append(after)
        where = f"({where}) AND {k} > {from_wire(key, f'${len(params)}')}"
    # One sorted array of the matching keys (16 bytes a uuid), then every batch_size-th of
    # it: the same sort as numbering rows with a window function, at 60% of its cost.
    sql = (
        f"SELECT {to_wire(key, 'b.a[i]')} FROM (SELECT array_agg({k} ORDER BY {k}) AS a"
        f" FROM {ident(e.name)} t WHERE {where}) b,"
        " generate_series($1::int, cardinality(b.a), $1::int) i ORDER BY i"
    )
    return [r[0] for r in await fetch(sql, *params)]
