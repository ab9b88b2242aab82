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

Filtered subscriptions also follow rows that move in and out of the filter (decision 3):

* A row's own change: the upsert pass sends it when its state at S matches. The leavers pass
  reads each key's *first* change in the window, whose before-image is the row as of C
  (writers of one key commit in ``seq`` order), and sends a tombstone when that image matched
  as of C and the key has no row in S that matches now. A key that matched in neither state
  is never sent, not even as a tombstone.
* A dependency's change (a membership row, a related parent, a parent's own parent) or the
  passing of time (a ``within`` bound): when any dependency table of the filter changed in
  the window, or the window's wall times differ and the filter is time-relative, the moves
  pass reads the rows of the entity not changed in the window that *may* have moved
  (``sql_moved``: rows joining a changed membership or parent row, rows whose date lies
  between the two cutoffs) and compares the filter as of C (at C's wall time) with the
  filter as of S (at S's): entering rows are sent whole, leaving rows as tombstones.

Time: a window carries the wall times of its two snapshots (``WindowTimes``, kept in the
sync token), and every evaluation fixes "now" to the time of the snapshot it is about, so a
row whose date left a ``within`` window between C and S is a mover like any other.

"As of X" is exact, not "current": a table as of snapshot X is its current rows that no
transaction after X touched, plus the before-image of the first change after X of every other
key that existed at X (``_as_of``). Every filtered evaluation reads its dependency tables as
of the window's own snapshot S (or C), never the live tables, so a membership change that
commits while a window is read belongs to exactly one window and is seen once.

The initial sync (C = None) is `syncd.store.initial`.

Every page is its own short statement on a pooled connection released before the caller sees
the batch (a page read ahead holds a connection only while its own statement runs, never while
the caller waits on a device); rows come out already in the wire layout (model column order,
then ``_version``) with values cast to primitives in SQL, so Python never touches a value.

Filters plug in as ``RowPredicate``: anything that writes a parameterized SQL condition given
how to spell a column. ``RowFilter`` is the minimal conjunction of ``=`` / ``IN`` terms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

from syncd.model import Column, Entity
from syncd.store.snapshot import Snapshot
from syncd.store.sql import SQL_TYPES, from_wire, ident, key_text_to_wire, to_wire

__all__ = [
    "ChangeBatch",
    "FilterTerm",
    "MovingPredicate",
    "RowFilter",
    "RowPredicate",
    "SourcedPredicate",
    "Subscription",
    "TimedPredicate",
    "WindowTimes",
    "dependencies",
    "filter_sql",
    "incremental_pages",
    "row_column",
    "time_relative",
    "touched_since",
    "wire_select_list",
    "written_since",
    "written_since_each",
]

# Spells a column as an SQL expression of the row source being filtered.
ColumnSql = Callable[[Column], str]
# Spells a staging table as a FROM item (appending its parameters).
TableSql = Callable[[Entity, list[object]], str]
# Spells the values a column held in the window's written rows, as a one-column subquery.
TouchedSql = Callable[[Entity, Column, list[object]], str]


class RowPredicate(Protocol):
    """A filter compiled to SQL: appends its values to ``params`` and returns a condition."""

    def sql(self, entity: Entity, column: ColumnSql, params: list[object]) -> str: ...


@runtime_checkable
class SourcedPredicate(Protocol):
    """A filter that reads other staging tables (``dependencies``) and lets the feed say
    which row source stands for each of them (``table``), to evaluate it as of a snapshot."""

    @property
    def dependencies(self) -> frozenset[str]: ...

    def sql(self, entity: Entity, column: ColumnSql, params: list[object]) -> str: ...

    def sql_sourced(
        self, entity: Entity, column: ColumnSql, params: list[object], table: TableSql
    ) -> str: ...


@runtime_checkable
class TimedPredicate(Protocol):
    """A filter that can depend on "now" (``within``): ``at`` fixes it for one snapshot."""

    @property
    def time_relative(self) -> bool: ...

    def at(self, now: datetime) -> RowPredicate: ...


# isinstance against a runtime-checkable Protocol walks the protocol's members on every call
# in Python 3.11 (5-10% of a reconnect storm's daemon CPU in py-spy); whether a class has
# them does not change, so the answer is kept per class.
_IMPLEMENTS: dict[tuple[type, type], bool] = {}


def _implements(obj: object, protocol: type) -> bool:
    key = (type(obj), protocol)
    known = _IMPLEMENTS.get(key)
    if known is None:
        known = _IMPLEMENTS[key] = isinstance(obj, protocol)
    return known


def _is_timed(obj: object) -> TypeGuard[TimedPredicate]:
    return _implements(obj, TimedPredicate)


def _is_sourced(obj: object) -> TypeGuard[SourcedPredicate]:
    return _implements(obj, SourcedPredicate)


@runtime_checkable
class MovingPredicate(Protocol):
    """A filter that can say which unchanged rows may have moved in or out of it between
    two checkpoints (None: none can), so the moves pass reads those instead of every row."""

    def sql_sourced(
        self,
        entity: Entity,
        column: ColumnSql,
        params: list[object],
        table: TableSql,
        now: datetime | None = None,
    ) -> str: ...

    def sql_moved(
        self,
        entity: Entity,
        column: ColumnSql,
        params: list[object],
        touched: TouchedSql,
        table: TableSql,
        then: datetime,
        now: datetime,
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class WindowTimes:
    """Wall times of a window's snapshots: "now" for time-relative filters at C and at S.

    ``since`` is None when C's time is unknown (a token from before times were kept): the
    window then evaluates both sides at ``until`` and moves nothing because of time.
    """

    since: datetime | None
    until: datetime


@dataclass(frozen=True, slots=True)
class FilterTerm:
    """A simple filter condition (column = value, column IN values) for tests and benchmarks."""

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
    times: WindowTimes | None = None

    def at(self, times: WindowTimes) -> Subscription:
        """This subscription for one window: a time-relative filter evaluates at S's time
        (an initial download too) and the incremental passes also at C's."""
        f = self.filter
        if _is_timed(f) and f.time_relative:
            f = f.at(times.until)
        return Subscription(self.entity, f, times)


def time_relative(sub: Subscription) -> bool:
    """Whether the passing of time alone can move rows of ``sub`` in or out."""
    return _is_timed(sub.filter) and sub.filter.time_relative


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Upserts are wire rows (values in model column order, then ``_version``), given as
    asyncpg Records or tuples; deletes are key values in their wire form.

    ``last_key`` is where a batch from an initial scan leaves it: the wire key of its last row
    (keyset pages come in key order), or a heap ``BlockPosition`` (block ranges,
    ``syncd.store.initial``); None for incremental batches. With the stream's snapshot it is
    where a cut-off initial download resumes (``ChangeStream(..., initial_after={entity:
    last_key})``).
    """

    entity: str
    upserts: Sequence[Sequence[Any]] = ()
    deletes: Sequence[Any] = field(default_factory=list)
    last_key: Any = None


def wire_select_list(entity: Entity, alias: str) -> str:
    """The SELECT list that reads ``entity``'s columns in wire form, then the row version."""
    cols = [to_wire(c, f"{alias}.{ident(c.name)}") for c in entity.columns]
    return ", ".join([*cols, f"{alias}._version"])


def row_column(alias: str) -> ColumnSql:
    """How to spell a column of the row aliased ``alias`` in a compiled filter."""
    return lambda c: f"{alias}.{ident(c.name)}"


def _old_image_column(alias: str, params: list[object]) -> ColumnSql:
    def column(c: Column) -> str:
        # The jsonb key is the column name passed as a value: no SQL text from names here.
        params.append(c.name)
        return f"({alias}.old->>${len(params)}::text)::{SQL_TYPES[c.type]}"

    return column


def dependencies(sub: Subscription) -> frozenset[str]:
    """The other entities whose rows the subscription's filter reads (parents, memberships)."""
    f = sub.filter
    return f.dependencies if _is_sourced(f) else frozenset()


async def written_since(fetch: Fetch, since: Snapshot, entities: Sequence[str]) -> set[str]:
    """Which of ``entities`` have a change logged after ``since`` (writes after the window's
    end count too: a superset, so a caller that skips the others misses nothing). One index
    probe per entity on (entity, txid)."""
    (written,) = await written_since_each(fetch, [(since, entities)])
    return written


async def written_since_each(
    fetch: Fetch, questions: Sequence[tuple[Snapshot, Sequence[str]]]
) -> list[set[str]]:
    """``written_since`` for several (checkpoint, entities) questions in one statement: a
    reconnect storm's sessions ask it together (``StagingStore.written_tables``)."""
    index: list[int] = []
    xmins: list[int] = []
    snapshots: list[tuple[int, int, tuple[int, ...]]] = []
    names: list[str] = []
    for i, (since, entities) in enumerate(questions):
        for entity in entities:
            index.append(i)
            xmins.append(since.xmin)
            snapshots.append(since.as_pg())
            names.append(entity)
    answers: list[set[str]] = [set() for _ in questions]
    if not names:
        return answers
    rows = await fetch(
        "SELECT q.i, q.e FROM unnest($1::int[], $2::xid8[], $3::pg_snapshot[], $4::text[])"
        " AS q(i, xmin, snap, e) WHERE EXISTS (SELECT 1 FROM _syncd_changes c"
        " WHERE c.entity = q.e AND c.txid >= q.xmin"
        " AND NOT pg_visible_in_snapshot(c.txid, q.snap))",
        index,
        xmins,
        snapshots,
        names,
    )
    for row in rows:
        answers[row[0]].add(row[1])
    return answers


def _as_of(snapshot: Snapshot) -> TableSql:
    """Spell a table as of ``snapshot``: rows no later transaction touched, plus the
    before-image of each other key's first later change (absent when that change made it)."""

    def table(e: Entity, params: list[object]) -> str:
        params.extend([e.name, snapshot.xmin, snapshot.as_pg()])
        n = len(params)
        name, xmin, snap = f"${n - 2}::text", f"${n - 1}::xid8", f"${n}::pg_snapshot"

        def later(x: str) -> str:
            return f"{x}.txid >= {xmin} AND NOT pg_visible_in_snapshot({x}.txid, {snap})"

        cols = [*(ident(c.name) for c in e.columns), "_version", "_txid"]
        k = ident(e.key)
        return (
            f"(SELECT {', '.join(f'_a.{c}' for c in cols)} FROM {ident(e.name)} _a"
            " WHERE NOT EXISTS (SELECT 1 FROM _syncd_changes _l"
            f" WHERE _l.entity = {name} AND _l.key = _a.{k}::text AND {later('_l')})"
            f" UNION ALL SELECT {', '.join(f'_o.{c}' for c in cols)} FROM _syncd_changes _c"
            f" CROSS JOIN LATERAL jsonb_populate_record(NULL::{ident(e.name)}, _c.old) _o"
            f" WHERE _c.entity = {name} AND _c.old IS NOT NULL AND {later('_c')}"
            " AND NOT EXISTS (SELECT 1 FROM _syncd_changes _f WHERE _f.entity = _c.entity"
            f" AND _f.key = _c.key AND _f.seq < _c.seq AND {later('_f')}))"
        )

    return table


def filter_sql(sub: Subscription, column: ColumnSql, params: list[object], at: Snapshot) -> str:
    """The subscription's filter with its dependency tables read as of ``at``."""
    f = sub.filter
    assert f is not None
    if _is_sourced(f) and f.dependencies:
        return f.sql_sourced(sub.entity, column, params, _as_of(at))
    return f.sql(sub.entity, column, params)


# Fetch is a coroutine taking SQL and parameters, run on a connection acquired for this page
# only (decision 5): the caller owns the pool and the retry policy.
Fetch = Callable[..., Any]


def _window(x: str, p: int) -> str:
    """The xid ``x`` is in the window; parameters $p.. are C.xmin, S.xmax, C, S."""
    return (
        f"{x} >= ${p}::xid8 AND {x} < ${p + 1}::xid8"
        f" AND NOT pg_visible_in_snapshot({x}, ${p + 2}::pg_snapshot)"
        f" AND pg_visible_in_snapshot({x}, ${p + 3}::pg_snapshot)"
    )


async def incremental_pages(
    fetch: Fetch,
    sub: Subscription,
    since: Snapshot,
    snapshot: Snapshot,
    batch_size: int,
    origin: str | None = None,
) -> AsyncIterator[ChangeBatch]:
    """The window (since, snapshot] of one subscription, for a device that held its rows as
    of `since` plus, when `origin` names it, the rows it wrote itself in the window."""
    now = sub.times.until if sub.times is not None else datetime.now(UTC)
    then = sub.times.since if sub.times is not None and sub.times.since is not None else now
    async for batch in _window_upserts(fetch, sub, since, snapshot, batch_size, now):
        yield batch
    if sub.filter is None:
        async for batch in _window_deletes(fetch, sub, since, snapshot, batch_size):
            yield batch
        return
    async for batch in _window_leavers(fetch, sub, since, snapshot, batch_size, then, now):
        yield batch
    if origin is not None:
        async for batch in own_leavers(fetch, sub, since, snapshot, origin, batch_size, now):
            yield batch
    deps = dependencies(sub)
    timed = then != now and time_relative(sub)
    if timed or (deps and await _changed_in_window(fetch, deps, since, snapshot)):
        moves = _moves(fetch, sub, since, snapshot, batch_size, then, now)
        async for batch in moves:
            yield batch


def _filter_at(
    sub: Subscription, column: ColumnSql, params: list[object], at: Snapshot, now: datetime
) -> str:
    """The subscription's filter with dependency tables as of ``at`` and "now" = ``now``."""
    f = sub.filter
    if _is_timed(f) and f.time_relative:
        f = f.at(now)
    return filter_sql(Subscription(sub.entity, f), column, params, at)


def touched_since(since: Snapshot) -> TouchedSql:
    """Spell the values ``column`` of ``entity`` held in rows written after C: each change's
    before-image and the current row of each such key. That covers the row's state at C and
    at S (and any later one: a superset the moves pass then compares exactly)."""

    def touched(e: Entity, col: Column, params: list[object]) -> str:
        params.extend([e.name, since.xmin, since.as_pg()])
        n = len(params)
        after = (
            f"_tc.entity = ${n - 2}::text AND _tc.txid >= ${n - 1}::xid8"
            f" AND NOT pg_visible_in_snapshot(_tc.txid, ${n}::pg_snapshot)"
        )
        keys = (
            f"SELECT _tc.key::{SQL_TYPES[e.key_column.type]} FROM _syncd_changes _tc WHERE {after}"
        )
        if col.name == e.key:
            return keys
        params.append(col.name)  # the jsonb key is a value: no SQL text from names
        old = f"(_tc.old->>${len(params)}::text)::{SQL_TYPES[col.type]}"
        return (
            f"SELECT {old} FROM _syncd_changes _tc WHERE {after} AND _tc.old IS NOT NULL"
            f" UNION SELECT _tt.{ident(col.name)} FROM {ident(e.name)} _tt"
            f" WHERE _tt.{ident(e.key)} IN ({keys})"
        )

    return touched


def _window_params(since: Snapshot, snapshot: Snapshot) -> list[object]:
    return [since.xmin, snapshot.xmax, since.as_pg(), snapshot.as_pg()]


async def _window_upserts(
    fetch: Fetch,
    sub: Subscription,
    since: Snapshot,
    snapshot: Snapshot,
    batch_size: int,
    now: datetime,
) -> AsyncIterator[ChangeBatch]:
    """Current rows written in the window, walking the (``_txid``, key) index."""
    e = sub.entity
    k = f"t.{ident(e.key)}"
    params = [*_window_params(since, snapshot), batch_size]  # $1-$4 window, $5 limit
    where = _window("t._txid", 1)
    if sub.filter is not None:
        where += f" AND ({_filter_at(sub, row_column('t'), params, snapshot, now)})"
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
    fetch: Fetch, sub: Subscription, since: Snapshot, snapshot: Snapshot, batch_size: int
) -> AsyncIterator[ChangeBatch]:
    """Keys whose last change in the window is a delete and whose row is gone."""
    e = sub.entity
    k = ident(e.key)
    params = [e.name, *_window_params(since, snapshot), batch_size]  # $2-$5 window, $6 limit
    old_ok = "true"
    if sub.filter is not None:
        old_ok = sub.filter.sql(e, _old_image_column("c", params), params)
    key_wire = key_text_to_wire(e.key_column, "c.key")
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


async def _window_leavers(
    fetch: Fetch,
    sub: Subscription,
    since: Snapshot,
    snapshot: Snapshot,
    batch_size: int,
    then: datetime,
    now: datetime,
) -> AsyncIterator[ChangeBatch]:
    """Tombstones of keys that matched as of C and have no matching row in S.

    The before-image of a key's first change in the window is its row as of C; a key whose
    row is gone, no longer matches, or was rewritten after S (its S state is then the next
    window's business: the upsert pass sends it there if it matches) leaves the device.
    """
    e = sub.entity
    k = ident(e.key)
    params: list[object] = [e.name, *_window_params(since, snapshot), batch_size]
    was_in = _filter_at(sub, _old_image_column("c", params), params, since, then)
    now_in = _filter_at(sub, row_column("r"), params, snapshot, now)
    key_wire = key_text_to_wire(e.key_column, "c.key")
    cursor = f"(c.txid, c.seq) > (${len(params) + 1}::xid8, ${len(params) + 2}::bigint)"
    # OFFSET 0 fences keep both probes per-row index lookups (see _window_deletes).
    select = f"""
        SELECT c.txid, c.seq, {key_wire}
        FROM _syncd_changes c
        WHERE c.entity = $1 AND c.old IS NOT NULL AND {_window("c.txid", 2)}
          AND NOT EXISTS (
              SELECT 1 FROM _syncd_changes f
              WHERE f.entity = c.entity AND f.key = c.key AND f.seq < c.seq
                AND {_window("f.txid", 2)}
              OFFSET 0)
          AND ({was_in}) IS TRUE
          AND NOT EXISTS (
              SELECT 1 FROM {ident(e.name)} r
              WHERE r.{k} = {from_wire(e.key_column, "c.key")}
                AND pg_visible_in_snapshot(r._txid, $5::pg_snapshot) AND ({now_in})
              OFFSET 0)"""
    order = "ORDER BY c.txid, c.seq LIMIT $6"
    rows = await fetch(f"{select} {order}", *params)
    while rows:
        yield ChangeBatch(e.name, (), [r[2] for r in rows])
        if len(rows) < batch_size:
            return
        rows = await fetch(f"{select} AND {cursor} {order}", *params, rows[-1][0], rows[-1][1])


async def touched_values(
    fetch: Fetch, entity: Entity, column: Column, values: Collection[object], since: Snapshot
) -> set[object]:
    """Which of `values` rows written since `since` held in `column`, before or after the
    write: the pieces of a split filter (``predicates.partition``) a window can have rows for.

    A piece's rows move only by their own writes, so the other pieces need not be read at
    all; a superset (writes after the window too) only reads a piece for nothing. One
    statement for all the pieces of a column (two when a window wrote many values:
    ``values_among``).
    """
    if not values:
        return set()
    params: list[object] = []
    inner = touched_since(since)(entity, column, params)
    return await values_among(fetch, inner, params, SQL_TYPES[column.type], values)


#: Up to this many live values, `values_among` sends them all in one statement.
FEW_VALUES = 32
#: With more, it first reads the values a window wrote, if there are at most this many.
WRITTEN_VALUES_LIMIT = 256


async def values_among(
    fetch: Fetch, inner: str, params: list[object], sql_type: str, values: Collection[object]
) -> set[object]:
    """Which of `values` the statement `inner` (one column of `sql_type`, with `params`)
    yields. `values` is a set-like collection (a dict's keys): ``in`` is a lookup.

    Sending every live value costs per value (asyncpg encodes the array, PostgreSQL unnests
    it), and a fleet has one per device while a window usually wrote a few: with more than
    FEW_VALUES, the values `inner` yields are read first, at most WRITTEN_VALUES_LIMIT of
    them, and looked up in `values`. Only a window that wrote more reads them against the
    array. Values come back as the column's Python type, which is the type filters coerce
    their values to (``filters.values.coerce``), so they compare and hash alike."""
    if len(values) > FEW_VALUES:
        limit = len(params) + 1
        sql = f"SELECT _w.v FROM ({inner}) AS _w(v) LIMIT ${limit}::int"
        rows = await fetch(sql, *params, WRITTEN_VALUES_LIMIT + 1)
        if len(rows) <= WRITTEN_VALUES_LIMIT:
            return {r[0] for r in rows if r[0] in values}
    ordered = list(values)
    array = f"${len(params) + 1}::{sql_type}[]"
    sql = f"SELECT _p.i FROM unnest({array}) WITH ORDINALITY AS _p(v, i) WHERE _p.v IN ({inner})"
    return {ordered[int(r[0]) - 1] for r in await fetch(sql, *params, ordered)}


async def origins_in_window(fetch: Fetch, since: Snapshot, snapshot: Snapshot) -> set[str]:
    """The devices (``uploads.origin_of``) that wrote anything in the window."""
    sql = (
        "SELECT DISTINCT c.origin FROM _syncd_changes c"
        f" WHERE c.origin IS NOT NULL AND {_window('c.txid', 1)}"
    )
    return {r[0] for r in await fetch(sql, *_window_params(since, snapshot))}


async def origins_since(fetch: Fetch, since: Snapshot) -> set[str]:
    """The devices that wrote anything after `since`, up to now: a superset of every window
    from `since`'s writers, for questions asked before (or for several) window ends."""
    sql = (
        "SELECT DISTINCT c.origin FROM _syncd_changes c WHERE c.origin IS NOT NULL"
        " AND c.txid >= $1::xid8 AND NOT pg_visible_in_snapshot(c.txid, $2::pg_snapshot)"
    )
    return {r[0] for r in await fetch(sql, since.xmin, since.as_pg())}


async def own_leavers(
    fetch: Fetch,
    sub: Subscription,
    since: Snapshot,
    snapshot: Snapshot,
    origin: str,
    batch_size: int,
    now: datetime,
) -> AsyncIterator[ChangeBatch]:
    """Tombstones of keys the device itself wrote in the window that have no matching row
    in S.

    The other passes know what a device holds from the window's start: a row it uploaded
    after that (an insert, or an update of a row it had) is on the device at the state it
    wrote, whatever the before-image says. If the row then left the device's filter, or was
    deleted, in the same window, only this pass says so. The keys are the device's own, so
    sending them reveals nothing (ARCHITECTURE.md decision 3).
    """
    e = sub.entity
    k = ident(e.key)
    params: list[object] = [e.name, *_window_params(since, snapshot), origin, batch_size]
    now_in = "true"  # unfiltered: only a row that is gone leaves
    if sub.filter is not None:
        now_in = _filter_at(sub, row_column("r"), params, snapshot, now)
    key_wire = key_text_to_wire(e.key_column, "c.key")
    select = f"""
        SELECT DISTINCT c.key, {key_wire}
        FROM _syncd_changes c
        WHERE c.origin = $6 AND c.entity = $1 AND {_window("c.txid", 2)}
          AND NOT EXISTS (
              SELECT 1 FROM {ident(e.name)} r
              WHERE r.{k} = {from_wire(e.key_column, "c.key")}
                AND pg_visible_in_snapshot(r._txid, $5::pg_snapshot) AND ({now_in})
              OFFSET 0)"""
    order = "ORDER BY c.key LIMIT $7"
    rows = await fetch(f"{select} {order}", *params)
    while rows:
        yield ChangeBatch(e.name, (), [r[1] for r in rows])
        if len(rows) < batch_size:
            return
        after = f"AND c.key > ${len(params) + 1}"
        rows = await fetch(f"{select} {after} {order}", *params, rows[-1][0])


async def _changed_in_window(
    fetch: Fetch, entities: frozenset[str], since: Snapshot, snapshot: Snapshot
) -> bool:
    sql = (
        "SELECT EXISTS (SELECT 1 FROM _syncd_changes c"
        f" WHERE c.entity = ANY($5::text[]) AND {_window('c.txid', 1)})"
    )
    rows = await fetch(sql, *_window_params(since, snapshot), sorted(entities))
    return bool(rows[0][0])


async def _moves(
    fetch: Fetch,
    sub: Subscription,
    since: Snapshot,
    snapshot: Snapshot,
    batch_size: int,
    then: datetime,
    now: datetime,
) -> AsyncIterator[ChangeBatch]:
    """Rows the window did not touch whose match changed because a dependency or time did.

    Such a row is the same as of C and as of S; the filter is evaluated on it twice, with
    the dependency tables as of C at C's time and as of S at S's. Rows entering are sent
    whole (as of S, which may be a before-image if the row was rewritten after S), rows
    leaving as tombstones. Only rows that may have moved are read (``sql_moved``: they join
    a changed dependency row, or their date lies between the two cutoffs); a filter that
    cannot say so is compared on every row. Keyset-paged by key over the entity as of S.
    """
    e = sub.entity
    k = f"t.{ident(e.key)}"
    params: list[object] = [e.name, *_window_params(since, snapshot), batch_size]
    source = _as_of(snapshot)(e, params)
    column = row_column("t")
    was = _filter_at(sub, column, params, since, then)
    is_in = _filter_at(sub, column, params, snapshot, now)
    moved: str | None = "true"
    f = sub.filter
    if isinstance(f, MovingPredicate):
        moved = f.sql_moved(e, column, params, touched_since(since), _as_of(snapshot), then, now)
    if moved is None:
        return
    width = len(e.columns) + 1  # wire columns and _version; then _k, now_in, was_in

    def page(after: bool) -> str:
        bound = f"AND {k} > {from_wire(e.key_column, f'${len(params) + 1}')}" if after else ""
        return f"""
            SELECT * FROM (
                SELECT {wire_select_list(e, "t")}, {k} AS _k,
                       ({is_in}) IS TRUE AS now_in, ({was}) IS TRUE AS was_in
                FROM {source} t
                WHERE ({moved})
                  AND NOT EXISTS (
                    SELECT 1 FROM _syncd_changes l
                    WHERE l.entity = $1 AND l.key = {k}::text AND {_window("l.txid", 2)})
                  {bound}) m
            WHERE m.now_in <> m.was_in ORDER BY m._k LIMIT $6"""

    key_index = e.key_index
    last: Any = None
    while True:
        rows = await fetch(page(last is not None), *params, *(() if last is None else (last,)))
        if not rows:
            return
        upserts = [r[:width] for r in rows if r[width + 1]]
        deletes = [r[key_index] for r in rows if not r[width + 1]]
        yield ChangeBatch(e.name, upserts, deletes)
        if len(rows) < batch_size:
            return
        last = rows[-1][key_index]
