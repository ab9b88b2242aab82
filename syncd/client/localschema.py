"""LocalTable definitions for the device's SQLite database, and the only place its SQL is spelled.

Strategy: every identifier in the device database (entity and column names) comes from the
server's model summary, so a hostile or buggy server could try to smuggle SQL through a name.
`validate_identifier` admits only `^[a-z][a-z0-9_]{0,47}$` and `quote` double-quotes the result;
no other code path turns a name into SQL text. Values are never part of SQL text: every
statement built here takes them as `?` bind parameters.

An `LocalTable` is compiled once per schema change and carries ready SQL strings, so applying a
batch of server rows is one `executemany` per statement with the rows passed through exactly
as the wire decoder produced them: local values are kept in the wire encodings (see
`SQLITE_TYPES`), hence no per-value conversion in Python. Tables are STRICT so a value of the
wrong type (a server bug) fails the whole transaction instead of being stored silently.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from protocol.coltypes import COLUMN_TYPES, MsgpackKind

IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,47}")
"""Names the server may give entities and columns. Leading underscore is excluded, which keeps
the `_syncd_` meta tables and the `_version` column out of the server's namespace."""

VERSION_COLUMN = "_version"
"""Server row version of the local row; 0 for a row created on the device and never synced."""

SQLITE_BY_MSGPACK: Mapping[MsgpackKind, str] = {
    # msgpack kind -> STRICT column type; the wire value is stored as is (PROTOCOL.md, "Values"):
    # uuid, numeric and json as text, timestamps as integer microseconds since the Unix epoch,
    # dates as integer days since 1970-01-01, booleans as 0/1 (Python's bool binds so).
    "str": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    "bin": "BLOB",
}

SQLITE_TYPES: Mapping[str, str] = {
    name: SQLITE_BY_MSGPACK[t.msgpack] for name, t in COLUMN_TYPES.items()
}
"""Column type -> the device's STRICT column type, from each type's msgpack kind
(``protocol.coltypes``): a new column type needs nothing here."""


class InvalidSchema(ValueError):
    """The server's model summary is unusable on the device (bad name, type or shape)."""


class EntitySchemaLike(Protocol):
    """What the device needs from one entity of the server's model summary."""

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def columns(self) -> Sequence[tuple[str, str]]: ...

    @property
    def writable(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class EntitySchema:
    """A plain `EntitySchemaLike`, for tests and for schemas read back from `_syncd_schema`."""

    name: str
    key: str
    columns: Sequence[tuple[str, str]]
    writable: Sequence[str] = ()


def validate_identifier(name: object, what: str) -> str:
    """Return `name` if it is a safe identifier, else raise `InvalidSchema` naming `what`."""
    if not isinstance(name, str) or IDENTIFIER.fullmatch(name) is None:
        raise InvalidSchema(f"{what} {name!r} is not an identifier matching {IDENTIFIER.pattern}")
    return name


def quote(name: str) -> str:
    """Double-quote an identifier already admitted by `validate_identifier` or a fixed name."""
    if '"' in name or "\x00" in name:  # defence in depth: validated names never contain these
        raise InvalidSchema(f"refusing to quote {name!r}")
    return f'"{name}"'


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


@functools.lru_cache(maxsize=64)
def _value_rows(width: int, rows: int) -> str:
    """``(?, ?), (?, ?), ...``: `rows` rows of `width` placeholders (cached: a bulk download
    asks for the same few sizes thousands of times)."""
    if rows < 1:
        raise ValueError(f"a VALUES list needs at least one row, not {rows}")
    return ", ".join([f"({_placeholders(width)})"] * rows)


@dataclass(frozen=True)
class LocalTable:
    """One validated entity with its SQL precompiled for the visible table and its base copy.

    `table` holds what the app sees: server rows with pending local edits applied on top.
    `base` holds, only for keys with pending edits, the server's last known row, so that a
    rejected edit can be reverted and server updates can be merged under the edit.
    """

    name: str
    key: str
    columns: tuple[tuple[str, str], ...]
    writable: frozenset[str]
    key_index: int = field(init=False)
    table: str = field(init=False)
    base: str = field(init=False)

    def __post_init__(self) -> None:
        validate_identifier(self.name, "entity name")
        seen: set[str] = set()
        for column in self.columns:
            if not (isinstance(column, tuple | list) and len(column) == 2):
                raise InvalidSchema(f"entity {self.name}: column {column!r} is not (name, type)")
            name, wire_type = column
            validate_identifier(name, f"entity {self.name}: column")
            if wire_type not in SQLITE_TYPES:
                raise InvalidSchema(f"entity {self.name}: column {name} has type {wire_type!r}")
            if name in seen:
                raise InvalidSchema(f"entity {self.name}: column {name} appears twice")
            seen.add(name)
        if self.key not in seen:
            raise InvalidSchema(f"entity {self.name}: key {self.key!r} is not one of its columns")
        unknown = self.writable - seen
        if unknown:
            raise InvalidSchema(f"entity {self.name}: writable {sorted(unknown)} not columns")
        object.__setattr__(self, "key_index", self.column_names.index(self.key))
        object.__setattr__(self, "table", quote(self.name))
        object.__setattr__(self, "base", quote(f"_syncd_base_{self.name}"))

    @classmethod
    def from_schema(cls, entity: EntitySchemaLike) -> LocalTable:
        try:
            columns = tuple((c[0], c[1]) for c in entity.columns)
            writable = frozenset(entity.writable)
        except (TypeError, IndexError) as exc:
            raise InvalidSchema(f"entity {entity.name!r}: malformed columns or writable") from exc
        return cls(entity.name, entity.key, columns, writable)

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    @property
    def types(self) -> dict[str, str]:
        return dict(self.columns)

    def create_sql(self, table: str) -> str:
        """DDL for the visible table or the base copy (same shape, so rows copy across)."""
        defs = [
            f"{quote(n)} {SQLITE_TYPES[t]}" + (" NOT NULL PRIMARY KEY" if n == self.key else "")
            for n, t in self.columns
        ]
        defs.append(f"{quote(VERSION_COLUMN)} INTEGER NOT NULL")
        return f"CREATE TABLE {table} ({', '.join(defs)}) {self.table_options}"

    @property
    def table_options(self) -> str:
        """STRICT always; WITHOUT ROWID when the key is text and rows are small.

        A clustered table on the key saves the separate key index: about 15% faster bulk
        upserts of uuid-keyed CRM rows here (bench/localdb.py). Not for integer keys, which
        already are the rowid, nor for entities with bytes columns, whose large rows would
        thin out the clustered b-tree.
        """
        types = self.types
        kinds = {SQLITE_TYPES[t] for t in types.values()}
        if SQLITE_TYPES[types[self.key]] == "INTEGER" or "BLOB" in kinds:
            return "STRICT"
        return "STRICT, WITHOUT ROWID"

    def add_column_sql(self, table: str, column: str) -> str:
        return f"ALTER TABLE {table} ADD COLUMN {quote(column)} {SQLITE_TYPES[self.types[column]]}"

    def drop_column_sql(self, table: str, column: str) -> str:
        return f"ALTER TABLE {table} DROP COLUMN {quote(validate_identifier(column, 'column'))}"

    def upsert_sql(self, table: str) -> str:
        """Insert a server row (wire order, then version); an older version never wins.

        ON CONFLICT DO UPDATE rather than INSERT OR REPLACE: only the upsert can compare the
        incoming version with the stored one. `>=` lets a re-sent row of the same version
        overwrite, so a row whose version was set by an upload acknowledgement takes the
        server's exact values when the change comes back.
        """
        return self.upsert_rows_sql(table, 1)

    def upsert_rows_sql(self, table: str, rows: int) -> str:
        """`upsert_sql` for `rows` rows at once (multi-row VALUES; parameters: the rows'
        values one row after the other), applied in order as if one by one.

        One statement, so one `sqlite3_step`, for many rows: 1.5-2x the rows/s of `executemany`
        of the one-row form on bench's CRM rows (bench/localdb.py), whose per-row step
        also releases and takes back the GIL once per row (docs/ARCHITECTURE.md, "First
        sync of a big device").
        """
        names = [*self.column_names, VERSION_COLUMN]
        cols = ", ".join(quote(n) for n in names)
        sets = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in names if n != self.key)
        version = quote(VERSION_COLUMN)
        return (
            f"INSERT INTO {table} ({cols}) VALUES {_value_rows(len(names), rows)} "
            f"ON CONFLICT ({quote(self.key)}) DO UPDATE SET {sets} "
            f"WHERE excluded.{version} >= {table}.{version}"
        )

    def delete_sql(self, table: str) -> str:
        return f"DELETE FROM {table} WHERE {quote(self.key)} = ?"

    def delete_up_to_sql(self, table: str) -> str:
        """Delete one row unless it is newer than a version (parameters: key, version)."""
        return f"DELETE FROM {table} WHERE {quote(self.key)} = ? AND {quote(VERSION_COLUMN)} <= ?"

    def row_width(self) -> int:
        """Values in a wire row of this entity: its columns, then the version."""
        return len(self.columns) + 1

    def select_sql(self, table: str, where_key: bool) -> str:
        cols = ", ".join(quote(n) for n in [*self.column_names, VERSION_COLUMN])
        where = f" WHERE {quote(self.key)} = ?" if where_key else f" ORDER BY {quote(self.key)}"
        return f"SELECT {cols} FROM {table}{where}"

    def copy_row_sql(self, source: str, target: str, overwrite: bool = True) -> str:
        """Copy the row with one key from `source` to `target` (base <-> visible)."""
        cols = ", ".join(quote(n) for n in [*self.column_names, VERSION_COLUMN])
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        return (
            f"{verb} INTO {target} ({cols}) SELECT {cols} FROM {source} WHERE {quote(self.key)} = ?"
        )

    def partial_upsert_sql(self, table: str, columns: Sequence[str]) -> str:
        """Insert a local row from some columns; on an existing key, set only those columns.

        The version is the last parameter and is only used when the row is new.
        """
        names = [*columns, VERSION_COLUMN]
        cols = ", ".join(quote(n) for n in names)
        sets = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in columns if n != self.key)
        conflict = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
        return (
            f"INSERT INTO {table} ({cols}) VALUES ({_placeholders(len(names))}) "
            f"ON CONFLICT ({quote(self.key)}) {conflict}"
        )

    def update_sql(self, table: str, columns: Sequence[str]) -> str:
        """Set some columns of one row; the key is the last parameter."""
        sets = ", ".join(f"{quote(n)} = ?" for n in columns)
        return f"UPDATE {table} SET {sets} WHERE {quote(self.key)} = ?"

    def set_version_sql(self, table: str) -> str:
        """Raise one row's version (parameters: version, key); never lowers it."""
        version = quote(VERSION_COLUMN)
        return f"UPDATE {table} SET {version} = max({version}, ?) WHERE {quote(self.key)} = ?"
