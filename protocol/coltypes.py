"""Column types: one registered entry per type, holding every fact about its values that does
not spell SQL.

Strategy: the way ``MESSAGE_TYPES`` registers messages, ``COLUMN_TYPES`` registers column
types and refuses duplicates, so a new type is one entry here (plus its SQL entry in
``syncd.store.coltypes``, the only other place, because SQL lives only in the store). An
entry says:

- how a value travels on the device wire: its msgpack kind and ``valid``, the check a server
  runs on every uploaded value (PROTOCOL.md, "Values"), including the bounds every SQL and
  device library agrees on (64-bit integers, years 1 to 9999, no NUL in text);
- what the value domain allows: whether it can key an entity (one exact canonical text form),
  whether values compare for equality or in a total order the same way in PostgreSQL and in
  Python (filters), whether it is a point in time (``within``: its value at an instant);
- its JSON forms, turned into the Python values the server computes with and asyncpg binds:
  ``filter_value`` for a literal of a client model's filter or a device's token claim (text
  ``"7"`` for an integer column), ``from_json`` for a row the ingest role sends over the admin
  socket, with ``expected`` naming what it takes for refusals.

It sits in ``protocol/`` because everything above imports it: ``protocol.schema`` checks the
type names of a Welcome, the device SDK stores values by msgpack kind, the filter parser
(below ``syncd.model``) checks literals. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Literal

import orjson

__all__ = [
    "COLUMN_TYPES",
    "MAX_NUMERIC_LENGTH",
    "BadValue",
    "ColumnType",
    "MsgpackKind",
    "Order",
]

#: The msgpack kinds a column value travels as (nil is the NULL of every type).
MsgpackKind = Literal["str", "int", "float", "bool", "bin"]
#: What comparisons mean on a type's values: none (null checks only), = and != only, or all.
Order = Literal["none", "equality", "total"]

#: numeric text longer than this is refused: it is stored, indexed and sent to every device.
MAX_NUMERIC_LENGTH = 1000

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NUMERIC_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_INT_TEXT = re.compile(r"^-?[0-9]{1,19}$")
_INT64 = (-(2**63), 2**63 - 1)
# Years 1 to 9999, the range every SQL and device date library agrees on.
_MIN_US, _MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
_MIN_DAY, _MAX_DAY = -719_162, 2_932_896
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)


class BadValue(ValueError):
    """A value that does not fit its column's type (a filter literal or a claim)."""


@dataclass(frozen=True, slots=True)
class ColumnType:
    """One column type; see the module docstring for what each field is for."""

    name: str
    msgpack: MsgpackKind
    #: The uploaded wire value is of this type and within what staging stores.
    valid: Callable[[Any], bool]
    #: An admin-socket JSON value as the Python value asyncpg binds; raises ValueError,
    #: TypeError, decimal.InvalidOperation or OverflowError when it is not one.
    from_json: Callable[[Any], Any]
    #: What ``from_json`` takes, in words, for refusals.
    expected: str
    key: bool = False
    order: Order = "none"
    #: For a point-in-time type, its value at an instant (filters' ``within`` compares with
    #: it); None for other types.
    at_instant: Callable[[datetime], object] | None = None
    #: A filter literal or claim as the Python value filters bind; raises BadValue.
    #: None for types filters cannot compare (null checks only).
    filter_value: Callable[[object], object] | None = None

    def __post_init__(self) -> None:
        if (self.order == "none") != (self.filter_value is None):
            raise RuntimeError(f"column type {self.name!r}: comparable exactly when filterable")
        if self.at_instant is not None and self.order != "total":
            raise RuntimeError(f"column type {self.name!r}: a point in time must be ordered")
        if self.key and self.order == "none":
            raise RuntimeError(f"column type {self.name!r}: a key must compare for equality")


def _registry(types: Iterable[ColumnType]) -> Mapping[str, ColumnType]:
    """The name -> type table; refuses duplicates (like ``MESSAGE_TYPES``)."""
    table: dict[str, ColumnType] = {}
    for t in types:
        if t.name in table:
            raise RuntimeError(f"duplicate column type {t.name!r}")
        table[t.name] = t
    return MappingProxyType(table)


# --- wire checks (uploads) -------------------------------------------------------------------


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _valid_text(value: Any) -> bool:
    # PostgreSQL text cannot hold NUL.
    return type(value) is str and "\x00" not in value


def _valid_json(value: Any) -> bool:
    if type(value) is not str or "\\u0000" in value:  # jsonb refuses the NUL escape
        return False
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


# --- admin JSON (ingest rows) ----------------------------------------------------------------


def _expect(value: Any, *types: type) -> Any:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise TypeError(f"expected {' or '.join(t.__name__ for t in types)}")
    return value


def _json_timestamp(value: Any) -> datetime:
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + timedelta(microseconds=value)
    parsed = datetime.fromisoformat(_expect(value, str))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _json_date(value: Any) -> date:
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH_DAY + timedelta(days=value)
    return date.fromisoformat(_expect(value, str))


def _json_numeric(value: Any) -> Decimal:
    result = Decimal(str(_expect(value, str, int, float)))
    if not result.is_finite():
        raise ValueError("not a finite number")
    return result


# --- filter literals and claims --------------------------------------------------------------


def _filter_integer(value: object) -> object:
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]:
        return value
    raise BadValue(f"{value!r} is not a 64-bit integer")


def _filter_float(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise BadValue(f"{value!r} is not a finite number")


def _filter_numeric(value: object) -> object:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            d = Decimal(str(value))
        except InvalidOperation:
            raise BadValue(f"{value!r} is not a decimal number") from None
        if d.is_finite():
            return d
    raise BadValue(f"{value!r} is not a finite decimal number")


def _filter_text(value: object) -> object:
    if isinstance(value, str) and "\x00" not in value:
        return value
    raise BadValue(f"{value!r} is not a string")


def _filter_uuid(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise BadValue(f"{value!r} is not a UUID")


def _filter_boolean(value: object) -> object:
    if isinstance(value, bool):
        return value
    raise BadValue(f"{value!r} is not true or false")


def _filter_timestamp(value: object) -> object:
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


def _filter_date(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise BadValue(f"{value!r} is not an ISO 8601 date")


#: Every column type, by name. PROTOCOL.md, "Values", lists them with their msgpack kinds
#: (tests/protocol/test_coltypes.py checks that the table and this registry agree).
COLUMN_TYPES: Mapping[str, ColumnType] = _registry(
    (
        ColumnType(
            "uuid",
            "str",
            valid=lambda v: type(v) is str and _UUID_RE.fullmatch(v) is not None,
            from_json=lambda v: uuid.UUID(_expect(v, str)),
            expected="a UUID string",
            key=True,
            order="total",
            filter_value=_filter_uuid,
        ),
        ColumnType(
            "text",
            "str",
            valid=_valid_text,
            from_json=lambda v: _expect(v, str),
            expected="a string",
            key=True,
            order="total",
            filter_value=_filter_text,
        ),
        ColumnType(
            "integer",
            "int",
            valid=lambda v: _is_int(v, *_INT64),
            from_json=lambda v: _expect(v, int),
            expected="a 64-bit integer",
            key=True,
            order="total",
            filter_value=_filter_integer,
        ),
        ColumnType(
            "float",
            "float",
            valid=lambda v: type(v) is float or type(v) is int,
            from_json=lambda v: float(_expect(v, int, float)),
            expected="a number",
            order="total",
            filter_value=_filter_float,
        ),
        ColumnType(
            "boolean",
            "bool",
            valid=lambda v: type(v) is bool,
            from_json=lambda v: _expect(v, bool),
            expected="true or false",
            order="equality",
            filter_value=_filter_boolean,
        ),
        ColumnType(
            "numeric",
            "str",
            valid=lambda v: (
                type(v) is str
                and len(v) <= MAX_NUMERIC_LENGTH
                and _NUMERIC_RE.fullmatch(v) is not None
            ),
            from_json=_json_numeric,
            expected="a finite decimal number, or a string holding one",
            order="total",
            filter_value=_filter_numeric,
        ),
        ColumnType(
            "timestamp",
            "int",
            valid=lambda v: _is_int(v, _MIN_US, _MAX_US),
            from_json=_json_timestamp,
            expected="an ISO-8601 string or integer microseconds since 1970-01-01 UTC",
            order="total",
            at_instant=lambda instant: instant,
            filter_value=_filter_timestamp,
        ),
        ColumnType(
            "date",
            "int",
            valid=lambda v: _is_int(v, _MIN_DAY, _MAX_DAY),
            from_json=_json_date,
            expected="an ISO date string (YYYY-MM-DD) or integer days since 1970-01-01",
            order="total",
            at_instant=lambda instant: instant.date(),  # the instant's UTC date
            filter_value=_filter_date,
        ),
        # json and bytes have no order shared by PostgreSQL and Python: filters leave them to
        # null checks only.
        ColumnType(
            "json",
            "str",
            valid=_valid_json,
            from_json=lambda v: orjson.dumps(v).decode(),
            expected="any JSON value",
        ),
        ColumnType(
            "bytes",
            "bin",
            valid=lambda v: type(v) is bytes,
            from_json=lambda v: base64.b64decode(_expect(v, str), validate=True),
            expected="a base64 string",
        ),
    )
)
