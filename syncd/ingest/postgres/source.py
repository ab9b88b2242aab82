"""A PostgreSQL database as a source: catalog metadata, keyset-paged copy, pgoutput changes.

Strategy (docs/ARCHITECTURE.md, "Ingest role (issue 13)").

- **Scope**: the tables of one schema (``public`` by default), or a named list, that have a
  single-column primary key of a key type; other tables, and columns of types syncd cannot
  carry (``values.PG_TYPES``), are left out and logged. Only in-scope tables are put in the
  org's publication: a table without a replica identity in a publication would make the
  source refuse its own UPDATEs and DELETEs.
- **Changes** come from a logical replication slot read through SQL functions
  (``pg_logical_slot_peek_binary_changes`` with the built-in ``pgoutput`` plugin; asyncpg does
  not speak the replication protocol). Peeking does not consume: the slot moves only in
  ``release`` (``pg_replication_slot_advance``), after the role recorded the position in
  staging, so a crash in between replays changes the role skips by position. The result is
  read through a cursor, so a large transaction never sits whole in our memory (the server
  spills it to disk while decoding).
- **Write-back** locks the row (``FOR UPDATE``) and compares it with what the device saw
  before writing, in one transaction: a change at the source since then is a conflict, and
  the source's own refusals (constraints, triggers, permissions) are reported with its
  message.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import orjson

from syncd.ingest.postgres import pgoutput
from syncd.ingest.postgres.values import KEY_TYPES, PG_TYPES, SESSION_SETTINGS
from syncd.ingest.postgres.values import from_text as _from_text
from syncd.ingest.source import (
    Change,
    ColumnSpec,
    Commit,
    Position,
    Row,
    SourceError,
    TableSpec,
    WriteOp,
    WriteResult,
)

__all__ = ["PostgresSource", "resource_name"]

_log = logging.getLogger(__name__)

#: Names syncd's client model accepts for entities and columns (syncd.model.IDENT_RE).
_MODEL_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

_CATALOG: Final = """
SELECT c.relname, a.attname, t.typname, bt.typname AS basetype,
       pk.indkey IS NOT NULL AND array_length(pk.indkey::int2[], 1) = 1
           AND a.attnum = pk.indkey[0] AS is_key,
       coalesce(array_length(pk.indkey::int2[], 1), 0) AS key_columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd'
LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND ($2::text[] IS NULL OR c.relname = ANY($2::text[]))
ORDER BY c.relname, a.attnum
"""


def resource_name(org: str) -> str:
    """The slot and publication name of an org (slot names allow [a-z0-9_] only)."""
    return "syncd_" + org.replace("-", "_")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _same(a: Any, b: Any, coltype: str) -> bool:
    if a is None or b is None:
        return a is b
    if coltype == "json":
        return bool(orjson.loads(a) == orjson.loads(b))
    return bool(a == b)


class PostgresSource:
    """One org's view of a PostgreSQL database (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        org: str,
        schema: str = "public",
        tables: Sequence[str] | None = None,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._tables = list(tables) if tables is not None else None
        self.slot = self.publication = resource_name(org)
        self._conn: asyncpg.Connection | None = None
        self._specs: dict[str, TableSpec] = {}
        self._pg_types: dict[str, dict[str, str]] = {}

    # -- connections ---------------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            try:
                self._conn = await asyncpg.connect(
                    self._dsn, server_settings=dict(SESSION_SETTINGS)
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise SourceError(f"cannot reach the PostgreSQL source: {exc}") from None
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError, asyncpg.InterfaceError):
                await conn.close(timeout=5)

    # -- metadata ------------------------------------------------------------------------

    async def describe(self) -> Sequence[TableSpec]:
        conn = await self._connection()
        rows = await conn.fetch(_CATALOG, self._schema, self._tables)
        by_table: dict[str, list[asyncpg.Record]] = {}
        for r in rows:
            by_table.setdefault(r["relname"], []).append(r)
        specs: dict[str, TableSpec] = {}
        pg_types: dict[str, dict[str, str]] = {}
        for table, cols in by_table.items():
            spec, types = self._table_spec(table, cols)
            if spec is not None:
                specs[table] = spec
                pg_types[table] = types
        self._specs, self._pg_types = specs, pg_types
        if await self._publication_exists(conn):
            await self._publish(conn, list(specs))
        return list(specs.values())

    def _table_spec(
        self, table: str, cols: list[asyncpg.Record]
    ) -> tuple[TableSpec | None, dict[str, str]]:
        if not _MODEL_NAME.fullmatch(table):
            _log.warning("source table %r left out: not a valid entity name", table)
            return None, {}
        key = next((c["attname"] for c in cols if c["is_key"]), None)
        columns: list[ColumnSpec] = []
        types: dict[str, str] = {}
        for c in cols:
            pg_type = c["basetype"] or c["typname"]
            coltype = PG_TYPES.get(pg_type)
            if coltype is None or not _MODEL_NAME.fullmatch(c["attname"]):
                _log.warning(
                    "source column %s.%s (%s) left out: syncd cannot carry it",
                    table,
                    c["attname"],
                    pg_type,
                )
                continue
            columns.append(ColumnSpec(c["attname"], coltype))
            types[c["attname"]] = pg_type
        if key is None or key not in types or PG_TYPES[types[key]] not in KEY_TYPES:
            _log.warning(
                "source table %r left out: it needs a single-column primary key of type "
                "uuid, text or integer",
                table,
            )
            return None, {}
        return TableSpec(table, key, tuple(columns)), types

    async def _publication_exists(self, conn: asyncpg.Connection) -> bool:
        found = await conn.fetchval(
            "SELECT 1 FROM pg_publication WHERE pubname = $1", self.publication
        )
        return found is not None

    async def _publish(self, conn: asyncpg.Connection, tables: Sequence[str]) -> None:
        """Make the publication hold exactly ``tables`` (new tables in scope join it)."""
        names = ", ".join(f"{_quote(self._schema)}.{_quote(t)}" for t in tables)
        if not await self._publication_exists(conn):
            target = f"FOR TABLE {names}" if tables else ""
            await conn.execute(f"CREATE PUBLICATION {_quote(self.publication)} {target}")
            return
        published = {
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_publication_tables"
                " WHERE pubname = $1 AND schemaname = $2",
                self.publication,
                self._schema,
            )
        }
        if set(tables) != published:
            if tables:
                await conn.execute(
                    f"ALTER PUBLICATION {_quote(self.publication)} SET TABLE {names}"
                )
            else:
                await conn.execute(
                    f"DROP PUBLICATION {_quote(self.publication)}; "
                    f"CREATE PUBLICATION {_quote(self.publication)}"
                )

    # -- following changes ---------------------------------------------------------------

    async def start(self) -> Position:
        conn = await self._connection()
        if not self._specs:
            await self.describe()
        await self._publish(conn, list(self._specs))
        lsn = await conn.fetchval(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            self.slot,
        )
        if lsn is None:
            try:
                lsn = await conn.fetchval(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    self.slot,
                )
            except asyncpg.ObjectNotInPrerequisiteStateError as exc:
                raise SourceError(
                    f"the PostgreSQL source cannot decode logically ({exc}): "
                    "set wal_level = logical and restart it"
                ) from None
        return str(lsn)

    async def initial_copy(self, table: TableSpec, page_size: int) -> AsyncIterator[Sequence[Row]]:
        conn = await self._connection()
        types = self._pg_types.get(table.name) or {}
        names = [c.name for c in table.columns]
        select = ", ".join(_quote(n) for n in names)
        base = f"SELECT {select} FROM {_quote(self._schema)}.{_quote(table.name)}"
        key = _quote(table.key)
        last: Any = None
        while True:
            if last is None:
                rows = await conn.fetch(f"{base} ORDER BY {key} LIMIT $1", page_size)
            else:
                rows = await conn.fetch(
                    f"{base} WHERE {key} > $1 ORDER BY {key} LIMIT $2", last, page_size
                )
            if not rows:
                return
            yield [self._native_row(names, types, r) for r in rows]
            last = rows[-1][table.key]
            if len(rows) < page_size:
                return

    @staticmethod
    def _native_row(names: list[str], types: Mapping[str, str], record: asyncpg.Record) -> Row:
        row = dict(zip(names, record, strict=True))
        for name, value in row.items():
            if types.get(name) == "timestamp" and isinstance(value, datetime):
                row[name] = value.replace(tzinfo=UTC)
        return row

    async def changes(self, after: Position, limit: int) -> AsyncIterator[Change | Commit]:
        conn = await self._connection()
        after_lsn = pgoutput.parse_lsn(after)
        relations: dict[int, pgoutput.Relation] = {}
        skipping = False
        query = (
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2,"
            " 'proto_version', '1', 'publication_names', $3)"
        )
        try:
            async with conn.transaction(readonly=True):
                async for record in conn.cursor(
                    query, self.slot, limit, self.publication, prefetch=1000
                ):
                    msg = pgoutput.parse(record[0])
                    if isinstance(msg, pgoutput.Relation):
                        relations[msg.relid] = msg  # kept even in skipped transactions
                    elif isinstance(msg, pgoutput.Begin):
                        # Its commit is at final_lsn: already recorded when before ``after``.
                        skipping = msg.final_lsn < after_lsn
                    elif skipping:
                        continue
                    elif isinstance(msg, pgoutput.Commit):
                        yield Commit(pgoutput.format_lsn(msg.end_lsn))
                    else:
                        for change in self._changes_of(msg, relations):
                            yield change
        except asyncpg.UndefinedObjectError as exc:
            raise SourceError(f"the source's replication slot is gone: {exc}") from None

    def _changes_of(
        self, msg: pgoutput.Message, relations: Mapping[int, pgoutput.Relation]
    ) -> list[Change]:
        if isinstance(msg, pgoutput.Truncate):
            return [
                Change(relations[r].name, "truncate")
                for r in msg.relids
                if r in relations and relations[r].name in self._specs
            ]
        if not isinstance(msg, pgoutput.Insert | pgoutput.Update | pgoutput.Delete):
            return []
        rel = relations[msg.relid]
        spec = self._specs.get(rel.name)
        if spec is None:
            # A table that joined the publication after our last describe: the role
            # describes again when it meets a table or column its model lacks.
            spec = TableSpec(rel.name, "", ())
        if isinstance(msg, pgoutput.Delete):
            return [Change(rel.name, "delete", key=self._key_of(rel, spec, msg.old_key))]
        row = self._row_of(rel, spec, msg.new)
        out: list[Change] = []
        if isinstance(msg, pgoutput.Update) and msg.old_key is not None:
            old_key = self._key_of(rel, spec, msg.old_key)
            if old_key != row.get(spec.key):
                out.append(Change(rel.name, "delete", key=old_key))
        out.append(Change(rel.name, "upsert", row=row))
        return out

    def _row_of(
        self, rel: pgoutput.Relation, spec: TableSpec, values: pgoutput.Tuple
    ) -> dict[str, Any]:
        known = {c.name: c.type for c in spec.columns}
        row: dict[str, Any] = {}
        for col, value in zip(rel.columns, values, strict=True):
            if value is pgoutput.UNCHANGED:
                continue  # a TOASTed value the update left alone: staging keeps it
            coltype = known.get(col.name)
            if coltype is None:
                coltype = PG_TYPES.get(self._type_name(col.type_oid), "")
                if not coltype:
                    continue  # a type syncd does not carry (left out of the model)
                row[col.name] = value  # a new column: the role describes again first
                continue
            row[col.name] = _from_text(coltype, value if isinstance(value, str) else None)
        return row

    def _key_of(self, rel: pgoutput.Relation, spec: TableSpec, values: pgoutput.Tuple) -> Any:
        for col, value in zip(rel.columns, values, strict=True):
            if col.key and isinstance(value, str):
                coltype = PG_TYPES.get(self._pg_types.get(rel.name, {}).get(col.name, ""), "text")
                return _from_text(coltype, value)
        raise SourceError(f"a change of {rel.name} without its key (replica identity)")

    @staticmethod
    def _type_name(oid: int) -> str:
        # Built-in type OIDs are fixed (pg_type.dat); enough to tell a new column's type.
        return _BUILTIN_OIDS.get(oid, "")

    async def release(self, upto: Position) -> None:
        conn = await self._connection()
        confirmed = await conn.fetchval(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            self.slot,
        )
        if confirmed is not None and pgoutput.parse_lsn(upto) > pgoutput.parse_lsn(confirmed):
            await conn.execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", self.slot, upto
            )

    async def stop(self) -> None:
        conn = await self._connection()
        await conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = $1",
            self.slot,
        )
        await conn.execute(f"DROP PUBLICATION IF EXISTS {_quote(self.publication)}")

    # -- write-back ----------------------------------------------------------------------

    async def write(self, op: WriteOp) -> WriteResult:
        spec = self._specs.get(op.table)
        if spec is None:
            await self.describe()
            spec = self._specs.get(op.table)
            if spec is None:
                return WriteResult(False, f"table {op.table!r} is not in the source's scope")
        conn = await self._connection()
        try:
            async with conn.transaction():
                return await self._write(conn, spec, op)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError):
                raise SourceError(f"lost the PostgreSQL source: {exc}") from None
            return WriteResult(False, f"the source refused it: {exc.sqlstate} {exc}")
        except (OSError, asyncpg.InterfaceError) as exc:
            raise SourceError(f"lost the PostgreSQL source: {exc}") from None

    def _bind(self, table: str, name: str, value: Any) -> Any:
        if self._pg_types[table].get(name) == "timestamp" and isinstance(value, datetime):
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    async def _write(self, conn: asyncpg.Connection, spec: TableSpec, op: WriteOp) -> WriteResult:
        table = f"{_quote(self._schema)}.{_quote(spec.name)}"
        types = {c.name: c.type for c in spec.columns}
        values = dict(op.values or {})
        unknown = sorted(set(values) - set(types))
        if unknown:
            return WriteResult(False, f"columns not in the source table: {', '.join(unknown)}")
        key = self._bind(spec.name, spec.key, op.key)
        names = [c.name for c in spec.columns]
        record = await conn.fetchrow(
            f"SELECT {', '.join(_quote(n) for n in names)} FROM {table}"
            f" WHERE {_quote(spec.key)} = $1 FOR UPDATE",
            key,
        )
        current = (
            None if record is None else self._native_row(names, self._pg_types[spec.name], record)
        )
        if op.op == "insert":
            if current is not None:
                if self._matches(current, values, types):
                    return WriteResult(True)  # written before (a replay)
                return WriteResult(False, "a row with this key already exists at the source", True)
            cols = list(values)
            await conn.execute(
                f"INSERT INTO {table} ({', '.join(_quote(c) for c in cols)})"
                f" VALUES ({', '.join(f'${i}' for i in range(1, len(cols) + 1))})",
                *(self._bind(spec.name, c, values[c]) for c in cols),
            )
            return WriteResult(True)
        if current is None:
            if op.op == "delete":
                return WriteResult(True)  # already gone
            return WriteResult(False, "the row was deleted at the source", True)
        if op.op == "update" and self._matches(current, values, types):
            return WriteResult(True)
        if op.expected is not None:
            changed = [
                c
                for c, v in op.expected.items()
                if c in types and not _same(current.get(c), v, types[c])
            ]
            if changed:
                return WriteResult(
                    False,
                    "changed at the source since the device's edit: "
                    + ", ".join(f"{c} is now {current.get(c)!r}" for c in changed),
                    True,
                )
        if op.op == "delete":
            await conn.execute(f"DELETE FROM {table} WHERE {_quote(spec.key)} = $1", key)
            return WriteResult(True)
        cols = [c for c in values if c != spec.key]
        if not cols:
            return WriteResult(True)
        sets = ", ".join(f"{_quote(c)} = ${i}" for i, c in enumerate(cols, start=2))
        await conn.execute(
            f"UPDATE {table} SET {sets} WHERE {_quote(spec.key)} = $1",
            key,
            *(self._bind(spec.name, c, values[c]) for c in cols),
        )
        return WriteResult(True)

    @staticmethod
    def _matches(current: Row, values: Row, types: Mapping[str, str]) -> bool:
        return all(_same(current.get(c), v, types[c]) for c, v in values.items())


#: OIDs of the built-in types in ``PG_TYPES`` (fixed across PostgreSQL versions).
_BUILTIN_OIDS: Final[Mapping[int, str]] = {
    16: "bool",
    17: "bytea",
    20: "int8",
    21: "int2",
    23: "int4",
    25: "text",
    114: "json",
    700: "float4",
    701: "float8",
    1042: "bpchar",
    1043: "varchar",
    1082: "date",
    1114: "timestamp",
    1184: "timestamptz",
    1700: "numeric",
    2950: "uuid",
    3802: "jsonb",
}
