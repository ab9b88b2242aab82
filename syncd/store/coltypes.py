"""Column types in PostgreSQL: the SQL half of the column-type registry.

Strategy: ``protocol.coltypes.COLUMN_TYPES`` registers every column type with all that does
not spell SQL (wire encoding and checks, order, JSON forms). SQL text lives only in the store,
so each type's SQL facts are one entry here, keyed by the same name: its staging column type,
the spelling ``format_type()`` reports for it (to compare an existing table with the model),
the cast the feed's SELECT applies so asyncpg decodes a cheap wire primitive
(ARCHITECTURE.md, ceilings: 2x the rows/s), and the inverse, from a wire value to the
column's type (uploads, key cursors).
Importing this module fails when the two registries do not name the same types, so a type
cannot be added to one half only.

Everything that depends only on a value's msgpack kind (the SQL type a wire value reads as)
is the fixed table ``WIRE_SQL``: msgpack has five kinds, however many column types there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from protocol.coltypes import COLUMN_TYPES, MsgpackKind

__all__ = ["SQL_COLUMN_TYPES", "WIRE_SQL", "SqlColumnType"]

#: The SQL type a wire value of each msgpack kind is read as (upload rows, key parameters).
WIRE_SQL: Mapping[MsgpackKind, str] = MappingProxyType(
    {"str": "text", "int": "int8", "float": "float8", "bool": "bool", "bin": "bytea"}
)


def _as_is(expr: str) -> str:
    return expr


@dataclass(frozen=True, slots=True)
class SqlColumnType:
    """One column type in staging; ``to_wire``/``from_wire`` wrap an SQL expression."""

    name: str
    #: The staging column type (also the cast of bind parameters compared with the column).
    sql: str
    #: ``format_type()``'s spelling of ``sql``.
    formatted: str
    #: A column expression as its wire encoding (PROTOCOL.md, "Values").
    to_wire: Callable[[str], str] = _as_is
    #: An expression of the wire encoding's SQL type (``WIRE_SQL``) as the column's type; exact
    #: for every value.
    from_wire: Callable[[str], str] = lambda expr: f"({expr})"
    #: Whether a column a filter names gets a (column, key) b-tree index at provisioning.
    indexed: bool = True
    #: Appended to the column in ordered comparisons, so SQL orders values as Python does.
    collate: str = ""


def _registry(types: Iterable[SqlColumnType]) -> Mapping[str, SqlColumnType]:
    """The name -> SQL type table; refuses duplicates and any mismatch with the wire half."""
    table: dict[str, SqlColumnType] = {}
    for t in types:
        if t.name in table:
            raise RuntimeError(f"duplicate column type {t.name!r}")
        table[t.name] = t
    missing, extra = set(COLUMN_TYPES) - set(table), set(table) - set(COLUMN_TYPES)
    if missing or extra:
        raise RuntimeError(
            f"column types without an SQL entry: {sorted(missing)};"
            f" SQL entries of no column type: {sorted(extra)}"
        )
    return MappingProxyType(table)


def _text(expr: str) -> str:
    return f"{expr}::text"


def _timestamp_to_wire(expr: str) -> str:
    # Integer microseconds since the epoch; exact, since extract() returns numeric.
    return f"(extract(epoch from {expr}) * 1000000)::bigint"


def _timestamp_from_wire(expr: str) -> str:
    # Whole seconds through to_timestamp (exact for |s| < 5.7e11: 1e6 = 2^6 * 15625), the
    # microseconds as an interval: no float rounding of the microsecond count.
    return (
        f"(to_timestamp(({expr} / 1000000)::float8)"
        f" + ({expr} % 1000000) * interval '1 microsecond')"
    )


SQL_COLUMN_TYPES: Mapping[str, SqlColumnType] = _registry(
    (
        SqlColumnType("uuid", "uuid", "uuid", to_wire=_text, from_wire=lambda e: f"({e})::uuid"),
        SqlColumnType("text", "text", "text", collate=' COLLATE "C"'),
        SqlColumnType("integer", "bigint", "bigint"),
        SqlColumnType("float", "double precision", "double precision"),
        SqlColumnType("boolean", "boolean", "boolean"),
        SqlColumnType(
            "numeric", "numeric", "numeric", to_wire=_text, from_wire=lambda e: f"({e})::numeric"
        ),
        SqlColumnType(
            "timestamp",
            "timestamptz",
            "timestamp with time zone",
            to_wire=_timestamp_to_wire,
            from_wire=_timestamp_from_wire,
        ),
        SqlColumnType(
            "date",
            "date",
            "date",
            to_wire=lambda e: f"({e} - date '1970-01-01')",  # integer days since 1970-01-01
            from_wire=lambda e: f"(date '1970-01-01' + ({e})::int4)",
        ),
        # Filters only test json for null, and a b-tree entry cannot hold a large document.
        SqlColumnType(
            "json",
            "jsonb",
            "jsonb",
            to_wire=_text,
            from_wire=lambda e: f"({e})::jsonb",
            indexed=False,
        ),
        SqlColumnType("bytes", "bytea", "bytea"),
    )
)
