"""SQL building blocks: the one identifier-quoting helper and the fixed type tables.

Strategy (project security rule): SQL text is assembled only from fixed templates, from
identifiers that passed a strict regex and are double-quoted here, and from names in the fixed
tables below. Values, whatever their origin, are always bind parameters.
"""

from __future__ import annotations

import re

from syncd.model import IDENT_RE, Column

__all__ = [
    "ORG_RE",
    "SQL_TYPES",
    "database_name",
    "from_wire",
    "ident",
    "to_wire",
]

# Org names end up in database names ("syncd_org_" + name stays within 63 bytes).
ORG_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_DB_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

SQL_TYPES: dict[str, str] = {
    "uuid": "uuid",
    "text": "text",
    "integer": "bigint",
    "float": "double precision",
    "boolean": "boolean",
    "numeric": "numeric",
    "timestamp": "timestamptz",
    "date": "date",
    "json": "jsonb",
    "bytes": "bytea",
}


def ident(name: str) -> str:
    """Double-quote a validated identifier (model names, system names, database names)."""
    if not (IDENT_RE.fullmatch(name) or _DB_RE.fullmatch(name) or _is_system(name)):
        raise ValueError(f"refusing to quote invalid identifier {name!r}")
    return '"' + name + '"'


def _is_system(name: str) -> bool:
    return name.startswith("_syncd_") or name in ("_version", "_txid")


def database_name(org: str) -> str:
    """The embedded/default staging database name of an org."""
    if not ORG_RE.fullmatch(org):
        raise ValueError(f"invalid org name {org!r}: must match {ORG_RE.pattern}")
    return "syncd_org_" + org


def to_wire(column: Column, expr: str) -> str:
    """``expr`` cast so asyncpg decodes a cheap primitive (see CEILINGS.md).

    uuid, numeric and json travel as text; timestamps as integer microseconds since the
    epoch (exact: extract() returns numeric); dates as integer days since 1970-01-01.
    """
    t = column.type
    if t in ("uuid", "numeric", "json"):
        return f"{expr}::text"
    if t == "timestamp":
        return f"(extract(epoch from {expr}) * 1000000)::bigint"
    if t == "date":
        return f"({expr} - date '1970-01-01')"
    return expr


def from_wire(column: Column, param: str) -> str:
    """The inverse of ``to_wire`` for a key parameter (key types: uuid, text, integer)."""
    if column.type == "uuid":
        return f"{param}::text::uuid"
    if column.type == "integer":
        return f"{param}::bigint"
    if column.type == "text":
        return f"{param}::text"
    raise ValueError(f"{column.type} is not a key type")
