"""SQL building blocks: the one identifier-quoting helper and the column types' casts.

Strategy (project security rule): SQL text is assembled only from fixed templates, from
identifiers that passed a strict regex and are double-quoted here, and from the fixed SQL of
the column-type registry (``syncd.store.coltypes``). Values, whatever their origin, are always
bind parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from syncd.model import IDENT_RE, Column
from syncd.store.coltypes import SQL_COLUMN_TYPES, WIRE_SQL

__all__ = [
    "ORG_NAME_MAX",
    "ORG_RE",
    "SQL_TYPES",
    "database_name",
    "from_wire",
    "ident",
    "key_text_to_wire",
    "org_name_problem",
    "to_wire",
]

#: Longest org name: it ends up in a database name, and "syncd_org_" + 40 stays well within
#: PostgreSQL's 63 bytes.
ORG_NAME_MAX = 40
#: What a new org may be called: a DNS label (RFC 1123: lowercase letters, digits and
#: hyphens, no hyphen first or last), because devices reach their org's instances by the TLS
#: SNI `<org>.<domain>` and a load balancer routes on that name (PROTOCOL.md, "Transport").
ORG_RE = re.compile(rf"^[a-z0-9](?:[a-z0-9-]{{0,{ORG_NAME_MAX - 2}}}[a-z0-9])?$")
#: Names an org already stored may have: orgs registered before names had to be DNS labels
#: (with "_") keep their staging database, though no SNI can route to them.
_STORED_ORG_RE = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{ORG_NAME_MAX - 1}}}$")
_DB_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

#: Column type -> staging SQL type (from the registry, ``syncd.store.coltypes``).
SQL_TYPES: Mapping[str, str] = {name: t.sql for name, t in SQL_COLUMN_TYPES.items()}


def ident(name: str) -> str:
    """Double-quote a validated identifier (model names, system names, database names)."""
    if not (IDENT_RE.fullmatch(name) or _DB_RE.fullmatch(name) or _is_system(name)):
        raise ValueError(f"refusing to quote invalid identifier {name!r}")
    return '"' + name + '"'


def _is_system(name: str) -> bool:
    return name.startswith("_syncd_") or name in ("_version", "_txid")


def org_name_problem(name: str) -> str | None:
    """Why `name` cannot be a new org's name, in words an admin can act on; None if it can."""
    if ORG_RE.fullmatch(name):
        return None
    if not name:
        return "an org name cannot be empty"
    if len(name) > ORG_NAME_MAX:
        return f"an org name has at most {ORG_NAME_MAX} characters, this one {len(name)}"
    bad = sorted({c for c in name if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "-")})
    if bad:
        listed = ", ".join(repr(c) for c in bad)
        return (
            f"an org name is a DNS label (devices reach it as <org>.<domain> by TLS SNI):"
            f" lowercase letters, digits and '-' only, not {listed}"
        )
    return "an org name cannot start or end with '-' (it is a DNS label)"


def database_name(org: str) -> str:
    """The embedded/default staging database name of an org."""
    if not _STORED_ORG_RE.fullmatch(org):
        raise ValueError(f"invalid org name {org!r}")
    return "syncd_org_" + org


def to_wire(column: Column, expr: str) -> str:
    """``expr`` cast so asyncpg decodes a cheap primitive, the column's wire encoding (see
    ARCHITECTURE.md, ceilings): uuid, numeric and json as text, timestamps as integer
    microseconds since the epoch, dates as integer days since 1970-01-01
    (``syncd.store.coltypes``)."""
    return SQL_COLUMN_TYPES[column.type].to_wire(expr)


def from_wire(column: Column, param: str) -> str:
    """The inverse of ``to_wire`` for a key parameter or a change-log key (key types: uuid,
    text, integer), given as the text or integer of the wire encoding."""
    if not column.kind.key:
        raise ValueError(f"{column.type} is not a key type")
    return SQL_COLUMN_TYPES[column.type].from_wire(f"{param}::{WIRE_SQL[column.kind.msgpack]}")


def key_text_to_wire(column: Column, expr: str) -> str:
    """A change-log key (canonical text) as the key's wire encoding."""
    return f"{expr}::bigint" if column.kind.msgpack == "int" else expr
