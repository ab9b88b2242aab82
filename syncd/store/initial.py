"""Initial downloads: every row of a subscription visible in a snapshot, page by page.

Two read shapes (ARCHITECTURE.md, "First sync of a big device (issue 16)"), both one short
statement per page on a pooled connection, never held while the caller waits on a device:

* **Heap block ranges** (unfiltered entities): each page is a TID range scan of the next
  blocks of the table, ``ctid >= '(b,0)' AND ctid < '(e,0)'``, sorted by key, so PostgreSQL
  reads the heap in order as a sequential scan would (a key-ordered page of random keys visits
  one heap page per row: half the streaming ceiling's speed). Rows arrive in key order within
  a page only. Where a download got is a ``BlockPosition``: the blocks before one block are
  sent, and the rows of the page in progress up to a key. Which rows a block holds changes
  only when the table is rewritten (VACUUM FULL, CLUSTER, pg_repack: a new relfilenode), so
  every page is gated on the relfilenode the position names and the scan raises
  ``TableRewritten`` instead of losing or repeating rows; a row updated or moved after the
  snapshot fails the snapshot test wherever it lies now, and the window after the snapshot
  sends it.
* **Keyset pages by primary key** (filtered entities, and positions that name a key: tokens
  sealed before block ranges), keeping rows whose ``_txid`` is visible in S, so
  ``ChangeBatch.last_key`` can resume it (``after``). A filtered scan first asks the (filter
  column, key) index for page boundaries, every ``batch_size``-th matching key, in one
  index-only pass; each page is then a key range the index reads directly, where plain LIMIT
  paging would re-read every remaining matching row (bitmap + sort) or walk the whole primary
  key (filter on the heap) per page. A block range would read every block for a filter that
  matches a few rows.

Both read one page ahead: the next statement runs while the caller encodes and sends the
current page (issue 4: the two used to take turns, each idle half the time). A page read
ahead holds a connection only while its own statement runs. Unfiltered keyset pages hold
``KEY_PAGE_ROWS`` rows, handed out ``batch_size`` at a time: pages are chained, so each one
costs a round trip and a statement on the download's critical path, and 1,000-row pages
spent more of it there than in reading rows.
"""

from __future__ import annotations

import asyncio
import contextlib
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

__all__ = ["BLOCK_PAGE_ROWS", "KEY_PAGE_ROWS", "BlockPosition", "TableRewritten", "initial_pages"]


#: Rows a block-range page holds at most: PostgreSQL sorts each page, and the daemon holds
#: two (one read ahead). Measured on 1M CRM rows (bench.firstsync --feed-options): ranges of
#: ~10,000 rows reached the streaming ceiling, ~1,000 fell short of it by the statements'
#: overhead. A page goes to the device as Changes of ``batch_size`` rows each.
BLOCK_PAGE_ROWS = 10_000
#: Rows an unfiltered key-ordered page holds at most (it goes to the device as Changes of
#: ``batch_size`` rows each). Pages are chained (each starts after the last key of the one
#: before), so every page costs a round trip, a statement and a wakeup of both processes on
#: the critical path. Measured on 1M rows against 1,000 (ARCHITECTURE.md, "First sync of a
#: big device"): 2,000 committed 7-12% more rows/s into the SDK, 5,000 and 10,000 no more
#: than 2,000 for more rows held.
KEY_PAGE_ROWS = 2_000
#: Blocks of the first range when the table has no size estimate yet (never analyzed).
_FIRST_SPAN = 16
#: The most blocks one range statement scans (1 GiB of 8 KiB blocks): a long stretch of
#: empty blocks is crossed in a few statements, none of them long.
_MAX_SPAN = 131_072


@dataclass(frozen=True, slots=True)
class BlockPosition:
    """How far a heap-order download of one table got: every row in the blocks before
    ``block``, and, when ``after`` is set, the rows of the range [``block``, ``end``) up to
    the wire key ``after`` (a range is sent in key order). ``filenode`` is the table's
    relfilenode the blocks belong to: after a rewrite the same block holds other rows."""

    filenode: int
    block: int
    end: int = 0
    after: str | int | bytes | None = None


class TableRewritten(Exception):
    """The table was rewritten (VACUUM FULL, CLUSTER, pg_repack) since the position a block
    scan resumes from or started at: its blocks hold other rows now, so the download of the
    entity must start over on a device that drops what it got (a Resync of the entity)."""

    def __init__(self, entity: str) -> None:
        super().__init__(f"{entity} was rewritten (VACUUM FULL, CLUSTER) during its download")
        self.entity = entity


def reads_blocks(sub: Subscription) -> bool:
    """Whether a download of ``sub`` from scratch reads heap block ranges (else keyset pages).

    Unfiltered only: a block range reads every row of its blocks, so a filter matching a
    small part of the table would read the whole heap for it, where the (filter column, key)
    index reads only what matches.
    """
    return sub.filter is None


async def initial_pages(
    fetch: Fetch,
    sub: Subscription,
    snapshot: Snapshot,
    batch_size: int,
    *,
    after: Any = None,
    storage_order: bool = False,
    page_rows: int = BLOCK_PAGE_ROWS,
    key_page_rows: int = KEY_PAGE_ROWS,
) -> AsyncGenerator[ChangeBatch, None]:
    """Every row visible in ``snapshot``, after the position ``after`` (None: from the start).

    A ``BlockPosition``, or None with ``storage_order`` for an entity that ``reads_blocks``,
    reads heap block ranges of at most ``max(page_rows, batch_size)`` rows each; otherwise
    keyset pages in key order (after the wire key ``after``), of at most
    ``max(key_page_rows, batch_size)`` rows each when unfiltered. Batches hold at most
    ``batch_size`` rows; each batch's ``last_key`` is the position it reaches, of the same
    kind.
    """
    blocks = after is None and storage_order and reads_blocks(sub)
    if isinstance(after, BlockPosition) or blocks:
        limit = max(page_rows, batch_size)
        scan = _block_pages(fetch, sub, snapshot, batch_size, limit, after)
    else:
        limit = max(key_page_rows, batch_size)
        scan = _keyset_pages(fetch, sub, snapshot, batch_size, after, limit)
    # aclosing: closing this generator stops the statements the scan reads ahead at once.
    async with contextlib.aclosing(scan) as batches:
        async for batch in batches:
            yield batch


@dataclass(frozen=True, slots=True)
class _Table:
    """What a block scan needs of the table at its start: its oid, its relfilenode, how many
    blocks it has and PostgreSQL's estimate of its rows per block (None: not analyzed)."""

    oid: int
    filenode: int
    blocks: int
    rows_per_block: float | None


async def _table(fetch: Fetch, name: str) -> _Table:
    # Read after the snapshot was taken: a row visible in it was committed before, so lies
    # in a block below this size unless the table is rewritten (which the filenode tells).
    sql = (
        "SELECT c.oid, pg_relation_filenode(c.oid),"
        " pg_relation_size(c.oid) / current_setting('block_size')::bigint,"
        " CASE WHEN c.reltuples > 0 AND c.relpages > 0 THEN c.reltuples / c.relpages END"
        " FROM pg_class c WHERE c.oid = $1::text::regclass"
    )
    oid, filenode, blocks, density = (await fetch(sql, ident(name)))[0]
    return _Table(int(oid), int(filenode), int(blocks), None if density is None else density)


async def _block_pages(
    fetch: Fetch,
    sub: Subscription,
    snapshot: Snapshot,
    batch_size: int,
    limit: int,
    position: BlockPosition | None,
) -> AsyncGenerator[ChangeBatch, None]:
    """Heap block ranges in block order, each read in key order, from ``position``.

    Each page is gated on the relfilenode (a one-time filter: the statement's lock on the
    table keeps a rewrite out while it runs), so rows come only from the blocks the position
    means; a page that returns nothing is told apart from a rewritten table by asking for the
    relfilenode once more. A range that holds more than ``limit`` visible rows goes on in
    key order (``after``), as a resumed position does.
    """
    e = sub.entity
    k = f"t.{ident(e.key)}"
    key, key_index = e.key_column, e.key_index
    table = await _table(fetch, e.name)
    if position is not None and position.filenode != table.filenode:
        raise TableRewritten(e.name)
    params: list[object] = [snapshot.as_pg(), limit, table.oid, table.filenode]
    where = (
        "pg_visible_in_snapshot(t._txid, $1::pg_snapshot)"
        " AND pg_relation_filenode($3::oid::regclass) = $4::oid"
    )
    if sub.filter is not None:
        where += f" AND ({filter_sql(sub, row_column('t'), params, snapshot)})"
    select = f"SELECT {wire_select_list(e, 't')} FROM {ident(e.name)} t WHERE {where}"
    n = len(params)
    ranged = f"{select} AND t.ctid >= ${n + 1}::tid AND t.ctid < ${n + 2}::tid"
    continued = f"{ranged} AND {k} > {from_wire(key, f'${n + 3}')}"

    def page(start: int, end: int, after: Any) -> _Range:
        """Start reading the rows of blocks [start, end) after key ``after`` (None: all)."""
        args = [*params, (start, 0), (end, 0)]
        sql = ranged if after is None else continued
        if after is not None:
            args.append(after)
        rows = _started(fetch(f"{sql} ORDER BY {k} LIMIT $2", *args))
        return _Range(rows, start, end, after is not None)

    # Ranges aim below the limit: one that holds more goes on after its last key, which reads
    # its blocks again (aimed at the limit itself, half the ranges did, at half the speed).
    target = max(1, limit * 3 // 4)
    density = table.rows_per_block
    span = _FIRST_SPAN if density is None else max(1, min(round(target / density), _MAX_SPAN))
    ahead: deque[_Range] = deque()
    planned = 0 if position is None else position.block  # the first block not in a range yet
    if position is not None and position.after is not None:
        ahead.append(page(position.block, position.end, position.after))
        planned = position.end
    try:
        while True:
            while planned < table.blocks and len(ahead) < 2:
                end = min(planned + span, table.blocks)
                ahead.append(page(planned, end, None))
                planned = end
            if not ahead:
                return
            current = ahead.popleft()
            rows = await current.rows
            if not rows:
                if await _filenode(fetch, table.oid) != table.filenode:
                    raise TableRewritten(e.name)
                if not current.continued:
                    span = min(span * 4, _MAX_SPAN)
                continue
            more = len(rows) == limit
            if more:  # the range goes on after its last row, ahead of the next range
                ahead.appendleft(page(current.start, current.end, rows[-1][key_index]))
                span = max(1, span // 2)
            else:
                span = _span(target, len(rows) / (current.end - current.start), span)
            # One turn of the loop puts the next statement on the wire before the caller's
            # encoding, which does not await, would hold it back.
            await asyncio.sleep(0)
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                if more or i + batch_size < len(rows):
                    reached = BlockPosition(
                        table.filenode, current.start, current.end, chunk[-1][key_index]
                    )
                else:
                    reached = BlockPosition(table.filenode, current.end)
                yield ChangeBatch(e.name, chunk, [], reached)
    finally:
        await _abandon([p.rows for p in ahead])


def _span(target: int, rows_per_block: float, span: int) -> int:
    """Blocks for a range of about ``target`` rows at ``rows_per_block``; at most four times
    ``span``, so a sparse stretch does not size a range for a dense one (a range holding more
    than the limit goes on in key order, which rereads its blocks)."""
    if rows_per_block <= 0:
        return min(span * 4, _MAX_SPAN)
    return max(1, min(round(target / rows_per_block), span * 4, _MAX_SPAN))


@dataclass(frozen=True, slots=True)
class _Range:
    """A block-range page in flight, the blocks [start, end) it reads and whether it goes on
    after a key (the rest of a range, not a range of its own)."""

    rows: asyncio.Future[list[Any]]
    start: int
    end: int
    continued: bool


async def _filenode(fetch: Fetch, oid: int) -> int:
    rows = await fetch("SELECT pg_relation_filenode($1::oid::regclass)", oid)
    return int(rows[0][0])


async def _keyset_pages(
    fetch: Fetch,
    sub: Subscription,
    snapshot: Snapshot,
    batch_size: int,
    after: Any,
    page_rows: int,
) -> AsyncGenerator[ChangeBatch, None]:
    """Rows visible in ``snapshot`` in key order, strictly after the wire key ``after``.

    Read-ahead: while the caller holds a page (encodes and sends it), the statement of the next
    page is already running, so PostgreSQL and the daemon work at the same time instead of in
    turns; at most two pages are held at once (three while a planned range that grew past its
    bound is finished). Unfiltered, the next page starts where this one ended, and a page
    holds ``page_rows`` rows, given to the caller ``batch_size`` at a time with a turn of the
    loop between them (the writer sends one while the next page's rows come in). Filtered, a
    result of one page is read whole in one statement; a bigger one is planned first
    (``_page_bounds``), then every range is known and read one ahead (a first page by LIMIT
    walked the primary key or read every matching row, and cost more than the plan).
    """
    e = sub.entity
    k = f"t.{ident(e.key)}"
    key = e.key_column
    # Filtered ranges are planned batch_size keys apart (and the one-page probe counts to it).
    limit = batch_size if sub.filter is not None else page_rows
    params: list[object] = [snapshot.as_pg(), limit]
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
            if len(rows) == limit and last != current.upper:
                ahead.appendleft(page(last, current.upper))  # the range goes on
            # One turn of the loop puts the next statement on the wire before the caller's
            # encoding, which does not await, would hold it back.
            await asyncio.sleep(0)
            if len(rows) <= batch_size:
                yield ChangeBatch(e.name, rows, [], last)
                continue
            for i in range(0, len(rows), batch_size):
                if i:
                    await asyncio.sleep(0)  # the writer's turn, and the next page's rows'
                chunk = rows[i : i + batch_size]
                yield ChangeBatch(e.name, chunk, [], chunk[-1][key_index])
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
