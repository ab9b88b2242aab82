"""Typed values for filter operands: checked JSON literals and coerced parameter values.

Strategy: a value reaches SQL only as a bind parameter and reaches the in-memory predicate as
the same Python object, so both sides compare identical values. ``check_literal`` runs when a
model is parsed (errors become ``ModelError`` paths); ``coerce`` runs when a filter is bound to
a device's claims, where text from a token (``"7"``) must become the column's type (``7``).
Types a filter cannot compare (json, bytes) are refused here, at parse time. What each type
accepts is its entry in the column-type registry (``protocol.coltypes``).
"""

from __future__ import annotations

import re

from protocol.coltypes import COLUMN_TYPES, BadValue

__all__ = [
    "COMPARABLE_TYPES",
    "ORDERED_TYPES",
    "TIME_TYPES",
    "BadValue",
    "coerce",
    "parse_duration",
]

# From the column-type registry: bytes and json have no total order shared by PostgreSQL and
# Python, so filters leave them to null checks only.
COMPARABLE_TYPES: frozenset[str] = frozenset(
    name for name, t in COLUMN_TYPES.items() if t.order != "none"
)
ORDERED_TYPES: frozenset[str] = frozenset(
    name for name, t in COLUMN_TYPES.items() if t.order == "total"
)
TIME_TYPES: frozenset[str] = frozenset(
    name for name, t in COLUMN_TYPES.items() if t.at_instant is not None
)

_DURATION = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def coerce(column_type: str, value: object) -> object:
    """``value`` (JSON or claim form) as the Python value of ``column_type``."""
    convert = COLUMN_TYPES[column_type].filter_value if column_type in COLUMN_TYPES else None
    if convert is None:
        raise BadValue(f"a filter cannot compare {column_type} values")
    return convert(value)


def parse_duration(spelling: object) -> int:
    """``"90d"`` -> seconds; units s, m, h, d."""
    if isinstance(spelling, str):
        m = _DURATION.fullmatch(spelling)
        if m:
            return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise BadValue(f"{spelling!r} is not a duration like '90d', '12h', '30m' or '45s'")
