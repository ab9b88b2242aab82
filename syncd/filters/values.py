"""Typed values for filter operands: checked JSON literals and coerced parameter values.

Strategy: a value reaches SQL only as a bind parameter and reaches the in-memory predicate as
the same Python object, so both sides compare identical values. ``check_literal`` runs when a
model is parsed (errors become ``ModelError`` paths); ``coerce`` runs when a filter is bound to
a device's claims, where text from a token (``"7"``) must become the column's type (``7``).
Types a filter cannot compare (json, bytes) are refused here, at parse time.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

__all__ = [
    "COMPARABLE_TYPES",
    "ORDERED_TYPES",
    "TIME_TYPES",
    "BadValue",
    "coerce",
    "parse_duration",
]

# bytes and json have no total order shared by PostgreSQL and Python; filters leave them to
# null checks only.
COMPARABLE_TYPES: frozenset[str] = frozenset(
    ("uuid", "text", "integer", "float", "boolean", "numeric", "timestamp", "date")
)
ORDERED_TYPES: frozenset[str] = COMPARABLE_TYPES - {"boolean"}
TIME_TYPES: frozenset[str] = frozenset(("timestamp", "date"))

_INT64 = (-(1 << 63), (1 << 63) - 1)
_INT_TEXT = re.compile(r"^-?[0-9]{1,19}$")
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadValue(ValueError):
    """A value that does not fit its column's type."""


def coerce(column_type: str, value: object) -> object:
    """``value`` (JSON or claim form) as the Python value of ``column_type``."""
    if column_type == "integer":
        if isinstance(value, str) and _INT_TEXT.fullmatch(value):
            value = int(value)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if is_int and _INT64[0] <= value <= _INT64[1]:  # type: ignore[operator]
            return value
        raise BadValue(f"{value!r} is not a 64-bit integer")
    if column_type == "float":
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise BadValue(f"{value!r} is not a finite number")
    if column_type == "numeric":
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                d = Decimal(str(value))
            except InvalidOperation:
                raise BadValue(f"{value!r} is not a decimal number") from None
            if d.is_finite():
                return d
        raise BadValue(f"{value!r} is not a finite decimal number")
    if column_type == "text":
        if isinstance(value, str) and "\x00" not in value:
            return value
        raise BadValue(f"{value!r} is not a string")
    if column_type == "uuid":
        if isinstance(value, uuid.UUID):
            return value
        if isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        raise BadValue(f"{value!r} is not a UUID")
    if column_type == "boolean":
        if isinstance(value, bool):
            return value
        raise BadValue(f"{value!r} is not true or false")
    if column_type == "timestamp":
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return parsed
        raise BadValue(f"{value!r} is not an ISO 8601 timestamp with a time zone")
    if column_type == "date":
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise BadValue(f"{value!r} is not an ISO 8601 date")
    raise BadValue(f"a filter cannot compare {column_type} values")


def parse_duration(spelling: object) -> int:
    """``"90d"`` -> seconds; units s, m, h, d."""
    if isinstance(spelling, str):
        m = _DURATION.fullmatch(spelling)
        if m:
            return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise BadValue(f"{spelling!r} is not a duration like '90d', '12h', '30m' or '45s'")
