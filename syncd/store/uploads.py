"""Applying one device's upload batch to an org's staging database: the SQL of offline edits.

Strategy. A batch is one staging transaction that does everything or nothing:

1. Claim the batch id in ``_syncd_upload_batches`` (INSERT ... ON CONFLICT DO NOTHING). A
   replay finds the row and returns the results stored with it; a concurrent replay of the
   same batch blocks on the primary key until the first commits, then finds it. Because the
   claim, the rows and the results commit together, "results stored" means "applied".
2. Lock every touched (entity, key) with transaction advisory locks, ordered by lock id, so
   concurrent batches over the same rows serialize without deadlocking; the pre-read then
   takes FOR UPDATE row locks against other writers (the ingest role).
3. Pre-read the current rows in wire form, whether each lies inside the device's filter, and
   whether the row's version was written by this device's own upload (``mine_base``).
4. Decide each op in Python against that state, then write set-based: per round (the n-th op
   of each key) and entity, one upsert over the rows sent as one JSON parameter and one
   DELETE; wire values are converted to SQL types in SQL. New rows are checked against the
   filter in SQL before they are written. Each applied op lands in ``_syncd_writeback`` for
   the ingest role.

Conflicts. An op is current when the row's version equals ``base_version``, or when the row's
version was written by an earlier upload of the same user and device that carried the same
base (the device made several edits on one base before it heard back: they are one chain, not
a conflict). Otherwise the entity's policy decides: ``server_wins`` answers ``conflict`` with
the server's row; ``client_wins`` applies; ``merge`` applies the edit's columns the server did
not change since the base (found from the change log's old image of the base version) and, if
some column was changed on both sides, answers ``conflict`` with the merged server row (the
server's value wins on those columns). A missing base image counts as "every column changed".

Results are plain tuples ``(status, version, row, code, reason)`` stored as msgpack, so a
replay returns byte-identical verdicts, bytes values included. An applied insert or update
carries the row as written (wire values, then version) and a conflict carries CONFLICT and a
reason beside the server's row: the device settles its copy from the result alone, which it
must, because a key inserted and deleted in one batch never comes back through a filtered
feed (no window ever held a row of it) (issue 9).
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import msgpack
import orjson

from protocol import CodedError, ErrorCode
from syncd.model import Column, Entity
from syncd.store.coltypes import SQL_COLUMN_TYPES, WIRE_SQL
from syncd.store.feed import RowPredicate, wire_select_list
from syncd.store.sql import SQL_TYPES, ident

__all__ = [
    "PlannedOp",
    "StoredResult",
    "UploadIdentity",
    "UploadRejected",
    "apply_upload",
    "key_text",
    "origin_of",
]

_log = logging.getLogger(__name__)

OpKind = Literal["insert", "update", "delete"]
StoredResult = tuple[str, int | None, list[Any] | None, int | None, str | None]


def _from_wire(column: Column, expr: str) -> str:
    """``expr`` (a wire value) as the column's SQL type; exact for every encoding."""
    return SQL_COLUMN_TYPES[column.type].from_wire(expr)


def key_text(key: object) -> str:
    """The key's canonical text, as the change log and the write-back outbox record it."""
    return str(key)


@dataclass(frozen=True, slots=True)
class UploadIdentity:
    """Who uploaded a batch: the user, the device and the batch id (the exactly-once key)."""

    user_id: str
    device_id: str
    batch_id: str


def origin_of(user_id: str, device_id: str) -> str:
    """How the change log names a device's own writes: user and device, unambiguously (a
    device id is only unique per user)."""
    return f"{len(user_id)}:{user_id}{device_id}"


@dataclass(frozen=True, slots=True)
class PlannedOp:
    """One op that passed validation; ``values`` are wire values of the changed columns."""

    index: int
    op: OpKind
    entity: Entity
    key: Any
    base_version: int | None
    values: Mapping[str, Any]


@dataclass(slots=True)
class _KeyState:
    row: list[Any] | None  # wire values then version; None when absent
    visible: bool
    mine_base: int | None  # base carried by this device's upload that wrote row's version


@dataclass(slots=True)
class _Round:
    # (op, proposed row, None or the reason of a merge conflict)
    upserts: dict[str, list[tuple[PlannedOp, list[Any], str | None]]] = field(default_factory=dict)
    deletes: dict[str, list[PlannedOp]] = field(default_factory=dict)


class UploadRejected(CodedError):
    """One upload op is refused; carries the 4xx code and the reason of its OpResult.

    Raised by the daemon's checks of an op against the model (``server.upload_batch``) and by the
    store's checks against the rows (outside the user's filters), and reported the same way.
    """

    @property
    def reason(self) -> str:
        return self.message


async def apply_upload(
    conn: asyncpg.Connection,
    who: UploadIdentity,
    n_ops: int,
    ops: Sequence[PlannedOp],
    early: Mapping[int, StoredResult],
    filters: Mapping[str, RowPredicate | None],
    *,
    isolate: bool = False,
) -> tuple[list[StoredResult], bool]:
    """Apply one batch; returns (results in op order, True if this was a replay).

    ``early`` holds verdicts already decided (validation rejections). With ``isolate`` every
    op is written in its own savepoint and a database error rejects only that op: the slow
    path the caller takes when the set-based path hit such an error.
    """
    async with conn.transaction():
        # The claim also marks every change this transaction logs as the device's own
        # (``_syncd_changes.origin``): the device holds what it wrote (feed.own_leavers).
        claimed = await conn.fetchval(
            "INSERT INTO _syncd_upload_batches (user_id, batch_id, device_id)"
            " SELECT $1, $2, $3 FROM (SELECT set_config('syncd.origin', $4, true)) o"
            " ON CONFLICT DO NOTHING RETURNING 1",
            who.user_id,
            who.batch_id,
            who.device_id,
            origin_of(who.user_id, who.device_id),
        )
        if claimed is None:
            stored = await conn.fetchval(
                "SELECT results FROM _syncd_upload_batches WHERE user_id = $1 AND batch_id = $2",
                who.user_id,
                who.batch_id,
            )
            return _decode_results(stored), True
        results: list[StoredResult | None] = [None] * n_ops
        for i, verdict in early.items():
            results[i] = verdict
        if ops:
            await _lock_keys(conn, ops)
            state = await _pre_read(conn, who, ops, filters)
            writeback: list[tuple[PlannedOp, int]] = []
            for round_ops in _rounds(ops, isolate):
                await _run_round(conn, who, round_ops, state, filters, results, writeback, isolate)
            await _record_writeback(conn, who, writeback)
        final = [r if r is not None else _internal(i) for i, r in enumerate(results)]
        await conn.execute(
            "UPDATE _syncd_upload_batches SET results = $3 WHERE user_id = $1 AND batch_id = $2",
            who.user_id,
            who.batch_id,
            msgpack.packb(final, use_bin_type=True),
        )
    return final, False


def _internal(index: int) -> StoredResult:
    return ("rejected", None, None, int(ErrorCode.INTERNAL_ERROR), f"op {index} was not decided")


def _decode_results(stored: bytes | None) -> list[StoredResult]:
    if stored is None:
        raise RuntimeError("an upload batch was committed without results")
    raw = msgpack.unpackb(stored, raw=False)
    return [(s, v, row, code, reason) for s, v, row, code, reason in raw]


async def _lock_keys(conn: asyncpg.Connection, ops: Sequence[PlannedOp]) -> None:
    # Ordered by lock id: any two batches take their common locks in the same order.
    # Keys travel as one JSON document: a text[] costs asyncpg ~0.4 us of Python per element.
    await conn.fetchval(
        "SELECT count(pg_advisory_xact_lock(s.h)) FROM ("
        " SELECT DISTINCT hashtextextended((u.j->>0) || '/' || (u.j->>1), 7469) AS h"
        " FROM jsonb_array_elements($1::jsonb) AS u(j) ORDER BY h) s",
        orjson.dumps([(o.entity.name, key_text(o.key)) for o in ops]).decode(),
    )


def _key_match(entity: Entity, alias: str, param: str) -> str:
    """``alias``'s key is one of the keys in ``param``, a JSON array of key texts.

    ``ARRAY(...)`` is computed once (an init plan), so the match stays an index scan over
    the primary key with an array of values.
    """
    key = entity.key_column
    return (
        f"{alias}.{ident(key.name)} = ANY(ARRAY(SELECT jsonb_array_elements_text({param}::jsonb))"
        f"::{SQL_TYPES[key.type]}[])"
    )


async def _pre_read(
    conn: asyncpg.Connection,
    who: UploadIdentity,
    ops: Sequence[PlannedOp],
    filters: Mapping[str, RowPredicate | None],
) -> dict[tuple[str, str], _KeyState]:
    state: dict[tuple[str, str], _KeyState] = {}
    by_entity: dict[str, tuple[Entity, set[str]]] = {}
    for o in ops:
        by_entity.setdefault(o.entity.name, (o.entity, set()))[1].add(key_text(o.key))
    for name in sorted(by_entity):
        entity, keys = by_entity[name]
        params: list[object] = [
            orjson.dumps(sorted(keys)).decode(),
            name,
            who.user_id,
            who.device_id,
        ]
        predicate = filters.get(name)
        visible = "true"
        if predicate is not None:
            visible = predicate.sql(entity, lambda c: f"t.{ident(c.name)}", params)
        k = ident(entity.key)
        rows = await conn.fetch(
            f"SELECT t.{k}::text, ({visible}), (SELECT w.base_version FROM _syncd_writeback w"
            f"  WHERE w.entity = $2 AND w.key = t.{k}::text AND w.version = t._version"
            "   AND w.user_id = $3 AND w.device_id = $4 AND w.op <> 'delete' LIMIT 1),"
            f" {wire_select_list(entity, 't')}"
            f" FROM {ident(name)} t WHERE {_key_match(entity, 't', '$1')}"
            f" ORDER BY t.{k} FOR UPDATE OF t",
            *params,
        )
        for r in rows:
            state[(name, r[0])] = _KeyState(list(r[3:]), bool(r[1]), r[2])
        for key in keys:
            state.setdefault((name, key), _KeyState(None, True, None))
    return state


def _rounds(ops: Sequence[PlannedOp], isolate: bool) -> list[list[PlannedOp]]:
    """Round n holds the n-th op of each key, so no statement touches a key twice."""
    if isolate:
        return [[o] for o in ops]
    rounds: list[list[PlannedOp]] = []
    seen: dict[tuple[str, str], int] = {}
    for o in ops:
        k = (o.entity.name, key_text(o.key))
        n = seen.get(k, 0)
        seen[k] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(o)
    return rounds


async def _run_round(
    conn: asyncpg.Connection,
    who: UploadIdentity,
    ops: Sequence[PlannedOp],
    state: dict[tuple[str, str], _KeyState],
    filters: Mapping[str, RowPredicate | None],
    results: list[StoredResult | None],
    writeback: list[tuple[PlannedOp, int]],
    isolate: bool,
) -> None:
    plan = _Round()
    for o in ops:
        s = state[(o.entity.name, key_text(o.key))]
        try:
            decision = await _decide(conn, o, s)
        except UploadRejected as exc:
            results[o.index] = ("rejected", None, None, int(exc.code), exc.reason)
            continue
        if decision is None:  # delete of a row that is already gone: the wish holds
            results[o.index] = ("applied", o.base_version or 0, None, None, None)
        elif decision[0] == "delete":
            plan.deletes.setdefault(o.entity.name, []).append(o)
        elif decision[0] == "conflict":
            results[o.index] = _conflict(decision[1], decision[2])
        else:
            reason = decision[2] if decision[0] == "merge_conflict" else None
            plan.upserts.setdefault(o.entity.name, []).append((o, decision[1], reason))
    if isolate:
        try:
            async with conn.transaction():
                await _write_round(conn, plan, state, filters, results, writeback)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            (o,) = ops
            reason = database_refusal(exc)
            _log.info(
                "staging refused an uploaded row",
                extra={"entity": o.entity.name, "sqlstate": exc.sqlstate, "detail": str(exc)},
            )
            results[o.index] = ("rejected", None, None, int(ErrorCode.VALIDATION_FAILED), reason)
            writeback[:] = [w for w in writeback if w[0] is not o]
    else:
        await _write_round(conn, plan, state, filters, results, writeback)


def database_refusal(exc: asyncpg.PostgresError) -> str:
    """What the device is told when staging refuses a value: the kind of problem, not the
    database's own text (it names constraints and internals); the log keeps that."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return "another row already has this value where values must be unique"
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return "the row refers to a row that does not exist"
    if isinstance(exc, asyncpg.NotNullViolationError):
        return "a value the server requires is missing"
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return "the row breaks a rule of the server's database"
    return "a value is out of range or malformed for its column"


def _conflict(row: list[Any] | None, reason: str) -> StoredResult:
    return ("conflict", None, row, int(ErrorCode.CONFLICT), reason)


def _stale(o: PlannedOp, row: list[Any]) -> str:
    return (
        f"the row changed on the server since version {o.base_version} (it is at version"
        f" {row[-1]}); the server's row is kept"
    )


async def _decide(conn: asyncpg.Connection, o: PlannedOp, s: _KeyState) -> Any:
    """('upsert', proposed row) | ('merge_conflict', proposed row, reason) | ('delete',)
    | ('conflict', row, reason) | None."""
    e = o.entity
    if s.row is not None and not s.visible:
        raise UploadRejected(
            ErrorCode.OUTSIDE_FILTER, f"{e.name} {o.key!r} is outside your filters"
        )
    if o.op == "insert":
        if s.row is None:
            return ("upsert", _proposed(e, None, o))
        if e.conflict == "client_wins":
            return ("upsert", _proposed(e, s.row, o))
        return ("conflict", s.row, "a row with this key already exists on the server")
    if s.row is None:
        if o.op == "delete":
            return None
        return ("conflict", None, "the row was deleted on the server; the edit was not applied")
    current = s.row[-1] == o.base_version or (
        s.mine_base is not None and s.mine_base == o.base_version
    )
    if o.op == "delete":
        if current or e.conflict == "client_wins":
            return ("delete",)
        return ("conflict", s.row, _stale(o, s.row))
    if current or e.conflict == "client_wins":
        return ("upsert", _proposed(e, s.row, o))
    if e.conflict == "server_wins":
        return ("conflict", s.row, _stale(o, s.row))
    return await _merge(conn, o, s.row)


async def _merge(conn: asyncpg.Connection, o: PlannedOp, row: list[Any]) -> Any:
    """Column merge: keep the edit's columns that the server left as they were at the base."""
    e = o.entity
    names = [c.name for c in e.columns]
    changed = [n for n in o.values if row[names.index(n)] != o.values[n]]
    if not changed:
        return ("upsert", _proposed(e, row, o))  # the server already holds these values
    params: list[object] = [e.name, key_text(o.key), str(o.base_version)]
    tests = []
    for n in changed:
        col = e.column(n)
        params.append(n)
        image = f"(c.old->>${len(params)}::text)::{SQL_TYPES[col.type]}"
        tests.append(f"t.{ident(n)} IS DISTINCT FROM {image}")
    k = e.key_column
    image_row = await conn.fetchrow(
        f"SELECT ARRAY[{', '.join(tests)}] FROM {ident(e.name)} t, _syncd_changes c"
        f" WHERE t.{ident(k.name)} = $2::text::{SQL_TYPES[k.type]} AND c.entity = $1::text"
        " AND c.key = $2::text AND c.old->>'_version' = $3::text ORDER BY c.seq LIMIT 1",
        *params,
    )
    server_changed = (
        set(changed)
        if image_row is None
        else {n for n, moved in zip(changed, image_row[0], strict=True) if moved}
    )
    keep = {n: v for n, v in o.values.items() if n not in server_changed}
    if not server_changed:
        return ("upsert", _proposed(e, row, o))
    reason = (
        f"{', '.join(sorted(server_changed))} changed on the server too since version"
        f" {o.base_version}; the server's values are kept there"
    )
    if not keep:
        return ("conflict", row, reason)
    merged = PlannedOp(o.index, o.op, e, o.key, o.base_version, keep)
    return ("merge_conflict", _proposed(e, row, merged), reason + ", yours elsewhere")


def _proposed(e: Entity, row: list[Any] | None, o: PlannedOp) -> list[Any]:
    """The full wire row after the op (without version): current row + changed columns."""
    values = o.values
    out = []
    for i, c in enumerate(e.columns):
        if c.name == e.key:
            out.append(o.key)
        elif c.name in values:
            out.append(values[c.name])
        else:
            out.append(None if row is None else row[i])
    return out


async def _write_round(
    conn: asyncpg.Connection,
    plan: _Round,
    state: dict[tuple[str, str], _KeyState],
    filters: Mapping[str, RowPredicate | None],
    results: list[StoredResult | None],
    writeback: list[tuple[PlannedOp, int]],
) -> None:
    for name in sorted(plan.upserts):
        items = plan.upserts[name]
        entity = items[0][0].entity
        inside = await _inside_filter(conn, entity, [p for _, p, _ in items], filters.get(name))
        accepted = []
        for (o, proposed, conflict), ok in zip(items, inside, strict=True):
            if ok:
                accepted.append((o, proposed, conflict))
            else:
                done = "inserted" if o.op == "insert" else "updated"
                reason = f"the {done} row would lie outside your filters"
                results[o.index] = ("rejected", None, None, int(ErrorCode.OUTSIDE_FILTER), reason)
        if not accepted:
            continue
        written = await _upsert(conn, entity, [p for _, p, _ in accepted])
        for o, _proposed_row, conflict in accepted:
            k = key_text(o.key)
            row = written[k]
            version = row[-1]
            state[(name, k)] = _KeyState(row, True, o.base_version or 0)
            if conflict is not None:
                results[o.index] = _conflict(row, conflict)
            else:
                # The row as written: the device takes it as is (module docstring).
                results[o.index] = ("applied", version, row, None, None)
            writeback.append((o, version))
    for name in sorted(plan.deletes):
        dels = plan.deletes[name]
        entity = dels[0].entity
        k = ident(entity.key)
        rows = await conn.fetch(
            f"DELETE FROM {ident(name)} t WHERE {_key_match(entity, 't', '$1')}"
            f" RETURNING t.{k}::text, t._version",
            orjson.dumps([key_text(o.key) for o in dels]).decode(),
        )
        gone = {r[0]: r[1] for r in rows}
        for o in dels:
            kt = key_text(o.key)
            version = gone.get(kt, o.base_version or 0)
            state[(name, kt)] = _KeyState(None, True, None)
            results[o.index] = ("applied", version, None, None, None)
            writeback.append((o, version))


def _json_value(column: Column, value: Any) -> Any:
    """A wire value as JSON can carry it: bytes as base64, non-finite floats as their SQL text."""
    if value is None:
        return None
    kind = column.kind.msgpack
    if kind == "bin":
        return base64.b64encode(value).decode("ascii")
    if kind == "float":
        value = float(value)  # an int of any size is a valid float; JSON ints stop at 64 bits
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _rows_source(entity: Entity, rows: Sequence[Sequence[Any]]) -> tuple[str, list[str]]:
    """``jsonb_array_elements(...) WITH ORDINALITY AS u(j, n)`` over wire rows, and its one
    parameter.

    One JSON text instead of an array per column: asyncpg checks and encodes every array
    element in Python (it was the largest Python cost of an upload, ~30 us per op), while
    orjson writes the whole batch in about a microsecond per row and PostgreSQL parses it in C.
    jsonb, not json: it is parsed once, where ``->>`` on json re-parses the element for every
    field (the write-back insert took 6.2 ms per 500 rows with json, 4.4 ms with jsonb).
    Only columns whose wire value JSON cannot hold as is are touched in Python (bin values,
    non-finite floats).
    """
    special = [i for i, c in enumerate(entity.columns) if c.kind.msgpack in ("bin", "float")]
    doc: Sequence[Sequence[Any]] = rows
    if special:
        copies = [list(r) for r in rows]
        for r in copies:
            for i in special:
                r[i] = _json_value(entity.columns[i], r[i])
        doc = copies
    return "jsonb_array_elements($1::jsonb) WITH ORDINALITY AS u(j, n)", [
        orjson.dumps(doc).decode()
    ]


def _json_field(column: Column, index: int) -> str:
    """Element ``index`` of the row ``u.j`` as the column's wire encoding in SQL."""
    text = f"(u.j->>{index})"
    kind = column.kind.msgpack
    if kind == "bin":
        return f"decode({text}, 'base64')"
    return f"{text}::{WIRE_SQL[kind]}"


async def _inside_filter(
    conn: asyncpg.Connection,
    entity: Entity,
    rows: Sequence[Sequence[Any]],
    predicate: RowPredicate | None,
) -> list[bool]:
    if predicate is None:
        return [True] * len(rows)
    source, params0 = _rows_source(entity, rows)
    params: list[object] = list(params0)
    position = {c.name: i for i, c in enumerate(entity.columns)}
    condition = predicate.sql(
        entity, lambda c: _from_wire(c, _json_field(c, position[c.name])), params
    )
    found = await conn.fetch(
        f"SELECT coalesce(({condition}), false) FROM {source} ORDER BY u.n", *params
    )
    return [bool(r[0]) for r in found]


async def _upsert(
    conn: asyncpg.Connection, entity: Entity, rows: Sequence[Sequence[Any]]
) -> dict[str, list[Any]]:
    """Write the rows; returns each key's row as stored, in wire form (values, then version).

    Read back from the table rather than echoed from the input: PostgreSQL normalizes some
    values (numeric ``007`` is ``7``, jsonb reorders keys), and the device must hold what
    every other device receives.
    """
    source, params = _rows_source(entity, rows)
    names = ", ".join(ident(c.name) for c in entity.columns)
    values = ", ".join(_from_wire(c, _json_field(c, i)) for i, c in enumerate(entity.columns))
    sets = ", ".join(
        f"{ident(c.name)} = EXCLUDED.{ident(c.name)}"
        for c in entity.columns
        if c.name != entity.key
    )
    k = ident(entity.key)
    conflict = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
    # The change-log triggers plan their transition-table join per call (schema.py), so a
    # bulk upsert is linear without any planner setting here.
    found = await conn.fetch(
        f"INSERT INTO {ident(entity.name)} AS t ({names}) SELECT {values} FROM {source}"
        f" ON CONFLICT ({k}) {conflict} RETURNING t.{k}::text, {wire_select_list(entity, 't')}",
        *params,
    )
    return {r[0]: list(r[1:]) for r in found}


def _json_default(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot serialize {type(value).__name__}")


async def _record_writeback(
    conn: asyncpg.Connection, who: UploadIdentity, entries: Sequence[tuple[PlannedOp, int]]
) -> None:
    if not entries:
        return
    # One JSON parameter for the whole outbox batch (see _rows_source for why).
    doc = orjson.dumps(
        [
            [
                o.entity.name,
                key_text(o.key),
                o.op,
                None if o.op == "delete" else dict(o.values),
                v,
                0 if o.op == "insert" else o.base_version,
            ]
            for o, v in entries
        ],
        default=_json_default,
    ).decode()
    await conn.execute(
        'INSERT INTO _syncd_writeback (entity, key, op, "values", version, base_version,'
        " user_id, device_id, batch_id)"
        " SELECT u.j->>0, u.j->>1, u.j->>2, nullif(u.j->3, 'null'::jsonb),"
        " (u.j->>4)::int8, (u.j->>5)::int8, $2, $3, $4"
        " FROM jsonb_array_elements($1::jsonb) AS u(j)",
        doc,
        who.user_id,
        who.device_id,
        who.batch_id,
    )
