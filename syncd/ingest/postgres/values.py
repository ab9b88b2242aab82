"""PostgreSQL types as syncd column types, and their text forms as Python values.

Strategy. A source column is carried when its type (after domains) maps to one of
``protocol.coltypes.COLUMN_TYPES``; others are left out of the model, named in the log.
pgoutput sends values in their output functions' text form, and so does ``jsonb_each_text``
on a staging row's before-image: ``from_text`` reads both (the source connection fixes
``DateStyle=ISO``, ``TimeZone=UTC`` and ``bytea_output=hex`` so the forms are known).
The result is the Python value ``COLUMN_TYPES[t].from_json`` would give (``source.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

__all__ = ["KEY_TYPES", "PG_TYPES", "SESSION_SETTINGS", "from_text"]

#: PostgreSQL type name (pg_type.typname) -> syncd column type.
PG_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "uuid": "uuid",
        "text": "text",
        "varchar": "text",
        "bpchar": "text",
        "citext": "text",
        "int2": "integer",
        "int4": "integer",
        "int8": "integer",
        "float4": "float",
        "float8": "float",
        "numeric": "numeric",
        "bool": "boolean",
        "timestamptz": "timestamp",
        "timestamp": "timestamp",
        "date": "date",
        "json": "json",
        "jsonb": "json",
        "bytea": "bytes",
    }
)
#: syncd types that can key an entity.
KEY_TYPES: Final = frozenset({"uuid", "text", "integer"})
#: Session settings that fix the text forms ``from_text`` reads.
SESSION_SETTINGS: Final[Mapping[str, str]] = MappingProxyType(
    {"DateStyle": "ISO", "TimeZone": "UTC", "bytea_output": "hex", "extra_float_digits": "3"}
)


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _bytes(text: str) -> bytes:
    if not text.startswith("\\x"):
        raise ValueError(f"bytea not in hex form: {text[:20]!r}")
    return bytes.fromhex(text[2:])


_FROM_TEXT: Final[Mapping[str, Callable[[str], Any]]] = MappingProxyType(
    {
        "uuid": uuid.UUID,
        "text": str,
        "integer": int,
        "float": float,
        "numeric": Decimal,
        "boolean": lambda t: t in ("t", "true"),
        "timestamp": _timestamp,
        "date": date.fromisoformat,
        "json": str,
        "bytes": _bytes,
    }
)


def from_text(coltype: str, text: str | None) -> Any:
    """The Python value of ``text`` for syncd type ``coltype`` (None stays None)."""
    return None if text is None else _FROM_TEXT[coltype](text)
